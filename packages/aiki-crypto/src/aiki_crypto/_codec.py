"""The AES-256-GCM payload codec."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aiki_core import CodecError, DecryptionError
from aiki_crypto._envelope import (
    NONCE_SIZE,
    associated_data,
    format_envelope,
    parse_envelope,
)
from aiki_crypto._keyring import KEY_SIZE

if TYPE_CHECKING:
    from pydantic import JsonValue

    from aiki_core import CodecContext
    from aiki_crypto._keyring import KeyRing

__all__ = ["AesGcmCodec"]

ADDRESS_KEY_INFO = b"aiki task address v1"
"""HKDF label of task address keys: they are derived from, never equal to, a ring key."""


class AesGcmCodec:
    """Encrypts every payload with AES-256-GCM under the first key of a `KeyRing`.

        client = Client(url, codec=AesGcmCodec(KeyRing.from_env("AIKI_KEYS")))

    A payload becomes the JSON string `"aiki:v1:<key id>:<base64url(nonce ||
    ciphertext || tag)>"`, with a random 96-bit nonce per value. The tag also covers
    the envelope version, the key id, and the run id and field of the payload's
    `CodecContext`, so an envelope edited or moved to another run or field does not
    decrypt. Decoding anything but an envelope raises `CodecError`; an unknown key,
    a wrong key or a tampered envelope raises `DecryptionError`.
    """

    __slots__ = ("_address_keys", "_aeads", "_primary", "_ring")

    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring
        self._primary = ring.primary_key_id
        # built once per key: address_key and decode run on every task of every run
        self._aeads: dict[str, AESGCM] = {}
        self._address_keys: dict[str, bytes] = {}
        for key_id, key in ring._items():
            self._aeads[key_id] = AESGCM(key)
            self._address_keys[key_id] = HKDF(
                algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=ADDRESS_KEY_INFO
            ).derive(key)

    @property
    def key_ring(self) -> KeyRing:
        """The ring this codec seals and opens with."""
        return self._ring

    def encode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        """Seal `value` under the ring's first key; `CodecError` if it is not JSON."""
        plaintext = _json_bytes(value, context)
        nonce = os.urandom(NONCE_SIZE)
        try:
            sealed = self._aeads[self._primary].encrypt(
                nonce, plaintext, associated_data(self._primary, context)
            )
        except OverflowError as exc:  # over AES-GCM's per-call limit (2 GiB)
            raise CodecError(f"{_where(context)} is too large to encrypt: {exc}") from None
        return format_envelope(self._primary, nonce, sealed)

    def decode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        """Open an envelope that `encode` made for the same `context`."""
        where = _where(context)
        envelope = parse_envelope(value, where)
        aead = self._aeads.get(envelope.key_id)
        if aead is None:
            raise self._unknown_key(envelope.key_id, f"cannot decrypt {where}")
        nonce, sealed = envelope.open_body(where)
        try:
            plaintext = aead.decrypt(nonce, sealed, associated_data(envelope.key_id, context))
        except InvalidTag:
            raise DecryptionError(
                envelope.key_id,
                f"cannot decrypt {where} with key {envelope.key_id!r}: authentication failed"
                " (the envelope was altered, sealed with another key under this id, or"
                " sealed for another run or field)",
            ) from None
        try:
            decoded: JsonValue = json.loads(plaintext.decode("utf-8"))
        except ValueError:  # authentic but not our JSON: a foreign writer holds the key
            raise DecryptionError(
                envelope.key_id,
                f"{where} decrypted with key {envelope.key_id!r} to something that is not"
                " JSON text",
            ) from None
        return decoded

    def address_key(self, run_input: JsonValue) -> bytes | None:
        """HMAC key of the task addresses of the run whose encoded input is `run_input`.

        It is derived (HKDF-SHA256) from the key that sealed that input, whatever key
        seals today, so a run keeps its addresses across a rotation.
        """
        envelope = parse_envelope(run_input, "the run's input")
        address_key = self._address_keys.get(envelope.key_id)
        if address_key is None:
            raise self._unknown_key(
                envelope.key_id, "cannot derive the task address key of a run from its input"
            )
        return address_key

    def _unknown_key(self, key_id: str, failure: str) -> DecryptionError:
        return DecryptionError(
            key_id,
            f"{failure}: it was sealed with key {key_id!r}, which is not in the key ring"
            f" (the ring holds {', '.join(map(repr, self._ring.key_ids))})",
        )

    def __repr__(self) -> str:
        return f"AesGcmCodec({self._ring!r})"


def _where(context: CodecContext) -> str:
    return f"the {context.field!r} payload of run {context.run_id!r}"


def _json_bytes(value: JsonValue, context: CodecContext) -> bytes:
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise CodecError(f"{_where(context)} is not JSON-serializable: {exc}") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # a lone surrogate has no UTF-8 form: JSON's \u escapes carry it exactly
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")
