"""The envelope: the JSON string that stands for an encrypted payload.

    aiki:v1:<key id>:<base64url, unpadded, of nonce (12 bytes) || ciphertext || tag (16 bytes)>

The key id needs no escaping (it has no ':'), so the text splits on its first three
colons. The associated data binds the version, the key id and the payload's place
(run id and field): an envelope edited in any part, or moved to another run or
field, fails authentication.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiki_core import CodecError, DecryptionError
from aiki_crypto._keyring import is_key_id

if TYPE_CHECKING:
    from aiki_core import CodecContext

__all__ = [
    "NONCE_SIZE",
    "TAG_SIZE",
    "Envelope",
    "associated_data",
    "format_envelope",
    "parse_envelope",
]

MAGIC = "aiki"
VERSION = "v1"
NONCE_SIZE = 12
TAG_SIZE = 16

_HEAD = f"{MAGIC}:{VERSION}:"
_VERSION_TOKEN = re.compile(r"v[0-9]{1,4}")
_BODY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope whose body is still text (decoded by `open_body`)."""

    key_id: str
    body: str

    def open_body(self, where: str) -> tuple[bytes, bytes]:
        """The nonce and the ciphertext with its tag; `DecryptionError` if mangled."""
        raw = _decode_body(self.body)
        if raw is None or len(raw) < NONCE_SIZE + TAG_SIZE:
            raise DecryptionError(
                self.key_id,
                f"cannot decrypt {where}: its envelope (key {self.key_id!r}) has a damaged"
                " body, not the base64url of a nonce, ciphertext and tag",
            )
        return raw[:NONCE_SIZE], raw[NONCE_SIZE:]


def format_envelope(key_id: str, nonce: bytes, sealed: bytes) -> str:
    """The envelope text of `sealed` (ciphertext and tag) under `key_id`."""
    body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
    return f"{_HEAD}{key_id}:{body}"


def parse_envelope(value: object, where: str) -> Envelope:
    """Read the head of an envelope; `CodecError` if `value` is not one this codec reads.

    `where` describes the payload for messages, e.g. "the 'input' payload of run 'r-1'".
    Messages never quote the value: it may be a plaintext that should not be logged.
    """
    if not isinstance(value, str):
        raise CodecError(
            f"{where} is a JSON {_json_kind(value)}, not an encrypted envelope; it was not"
            " sealed by this codec (refusing to pass it through unencrypted)"
        )
    if not value.startswith(_HEAD):
        magic, _, rest = value.partition(":")
        version = rest.partition(":")[0]
        if magic == MAGIC and _VERSION_TOKEN.fullmatch(version):
            raise CodecError(
                f"{where} is an envelope of version {version!r}; this codec reads {VERSION!r}"
            )
        raise CodecError(
            f"{where} is a JSON string that is not an encrypted envelope; it was not sealed"
            " by this codec (refusing to pass it through unencrypted)"
        )
    key_id, colon, body = value[len(_HEAD) :].partition(":")
    if not colon or not is_key_id(key_id):
        raise CodecError(f"{where} is a malformed envelope: it names no valid key id")
    return Envelope(key_id, body)


def associated_data(key_id: str, context: CodecContext) -> bytes:
    """What the tag authenticates besides the plaintext: version, key id and place.

    A JSON array, so no choice of run id or field can make two places collide.
    """
    return json.dumps(
        [MAGIC, VERSION, key_id, context.run_id, context.field],
        ensure_ascii=True,
        separators=(",", ":"),
    ).encode("ascii")


def _decode_body(body: str) -> bytes | None:
    if not _BODY.fullmatch(body):
        return None
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return None
    # the decoder ignores the unused low bits of the last character: demand the one
    # canonical text, so no two envelope texts open to the same ciphertext
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != body:
        return None
    return raw


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
