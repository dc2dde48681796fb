"""The key ring: named AES-256 keys, the first of which seals new payloads."""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import TYPE_CHECKING

from aiki_core import CodecError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["KEY_SIZE", "KeyRing"]

KEY_SIZE = 32
"""Bytes in a key: AES-256."""

DEFAULT_ENV_VAR = "AIKI_KEYS"

_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KEY_ID_RULE = "1 to 64 characters among A-Z a-z 0-9 _ . -"


def is_key_id(text: str) -> bool:
    """Whether `text` is a well-formed key id."""
    return _KEY_ID.fullmatch(text) is not None


def encode_key(key: bytes) -> str:
    """The unpadded base64url text of a key, as `AIKI_KEYS` holds it."""
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")


def _decode_key(text: str) -> bytes | None:
    # base64url as we print it; standard base64 (`openssl rand -base64 32`) and
    # padding are accepted too, anything else in the text is refused, not skipped
    # (the lenient default decoder drops unknown characters)
    stripped = text.rstrip("=")
    try:
        return base64.b64decode(
            stripped + "=" * (-len(stripped) % 4), altchars=b"-_", validate=True
        )
    except (binascii.Error, ValueError):
        return None


class KeyRing:
    """An ordered set of named AES-256 keys.

    The first key seals every new payload; every key opens what it sealed. To rotate,
    put a new key first and keep the old ones until no stored payload needs them.

        ring = KeyRing([("k2", new_key), ("k1", old_key)])
        ring = KeyRing.from_env("AIKI_KEYS")  # "k2:<base64url>,k1:<base64url>"

    A key id is 1 to 64 characters among `A-Z a-z 0-9 _ . -`. A malformed ring
    raises `CodecError`, whose message names the problem but never a key's bytes;
    `repr` shows the key ids only.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[tuple[str, bytes]]) -> None:
        ring: dict[str, bytes] = {}
        for position, entry in enumerate(keys, start=1):
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise CodecError(f"key ring entry {position} is not a (key id, key) pair")
            key_id, key = entry
            if not isinstance(key_id, str) or not is_key_id(key_id):
                shown = repr(key_id) if isinstance(key_id, str) and len(key_id) <= 64 else ""
                raise CodecError(
                    f"key ring entry {position}: key id {shown or '(not shown)'} is not"
                    f" {_KEY_ID_RULE}"
                )
            if key_id in ring:
                raise CodecError(f"key ring lists key id {key_id!r} twice")
            if not isinstance(key, bytes):
                raise CodecError(f"key {key_id!r} is a {type(key).__name__}, not bytes")
            if len(key) != KEY_SIZE:
                raise CodecError(
                    f"key {key_id!r} is {len(key)} bytes long; AES-256 needs exactly {KEY_SIZE}"
                )
            ring[key_id] = key
        if not ring:
            raise CodecError("the key ring is empty: it needs at least one key to seal payloads")
        self._keys = ring

    @classmethod
    def parse(cls, text: str, *, source: str = "the key ring text") -> KeyRing:
        """Build a ring from `"k2:<base64url key>,k1:<base64url key>"`, first key first.

        Whitespace around entries is ignored. `source` names where the text came from
        in error messages.
        """
        if not text.strip():
            raise CodecError(f"{source} is empty: it needs at least one 'id:key' entry")
        pairs: list[tuple[str, bytes]] = []
        for position, raw in enumerate(text.split(","), start=1):
            entry = raw.strip()
            where = f"entry {position} of {source}"
            if not entry:
                raise CodecError(f"{where} is empty (a stray comma?)")
            key_id, colon, encoded = entry.partition(":")
            if not colon:
                # the entry may be a bare key: name its place, never its text
                raise CodecError(f"{where} has no ':' between its key id and its key")
            if not is_key_id(key_id):
                raise CodecError(f"{where}: the key id is not {_KEY_ID_RULE}")
            key = _decode_key(encoded)
            if key is None:
                raise CodecError(f"{where}: key {key_id!r} is not valid base64url")
            if len(key) != KEY_SIZE:
                raise CodecError(
                    f"{where}: key {key_id!r} is {len(key)} bytes long;"
                    f" AES-256 needs exactly {KEY_SIZE}"
                )
            pairs.append((key_id, key))
        try:
            return cls(pairs)
        except CodecError as exc:  # a duplicate id: say where the text came from
            raise CodecError(f"{source}: {exc.message}") from None

    @classmethod
    def from_env(
        cls, name: str = DEFAULT_ENV_VAR, *, environ: Mapping[str, str] | None = None
    ) -> KeyRing:
        """Build a ring from the environment variable `name` (see `parse` for the format).

        `environ` defaults to `os.environ`. A missing variable raises `CodecError`.
        """
        env = os.environ if environ is None else environ
        text = env.get(name)
        if text is None:
            raise CodecError(
                f"environment variable {name} is not set; it should hold the key ring"
                " as 'id:<base64url key>', comma-separated, newest first"
            )
        return cls.parse(text, source=f"environment variable {name}")

    @staticmethod
    def generate_key() -> bytes:
        """A new random 32-byte key, from the operating system's CSPRNG."""
        return os.urandom(KEY_SIZE)

    @property
    def primary_key_id(self) -> str:
        """The id of the key that seals new payloads (the first one)."""
        return next(iter(self._keys))

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id, in ring order."""
        return tuple(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={self.key_ids!r})"

    def _items(self) -> Iterable[tuple[str, bytes]]:
        """The ring's (key id, key) pairs; for the codec only."""
        return self._keys.items()
