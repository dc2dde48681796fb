"""The payload codec protocol.

A codec transforms every user payload on its way out of the process (run input and
result, task input and result, event data, error details) and back on its way in.
`aiki-crypto` provides an encrypting one; `IdentityCodec` (the default) changes
nothing. The server never needs to read a payload, so it only ever stores what
`encode` returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pydantic import JsonValue

__all__ = ["CodecContext", "IdentityCodec", "PayloadCodec"]


@dataclass(frozen=True, slots=True)
class CodecContext:
    """Where a payload belongs; an encrypting codec binds its ciphertext to it.

    `run_id` is the run (or, before the server has named the run, the start's
    reference id); `field` names the slot, such as `"input"`, `"result"`,
    `"task:<address>:result"` or `"event:<name>"`.
    """

    run_id: str
    field: str


@runtime_checkable
class PayloadCodec(Protocol):
    """Transforms JSON payloads for the wire and back."""

    def address_key(self, run_input: JsonValue) -> bytes | None:
        """Key for the HMAC task addresses of the run whose encoded input is `run_input`.

        `None` means plain SHA-256 addresses. An encrypting codec derives the key from
        the key that sealed the run's input, so a run keeps its addresses when the key
        ring rotates; it raises `CodecError` when that key is gone.
        """

    def encode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        """Turn a payload into what is sent to the server."""

    def decode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        """Turn what the server returned back into the payload; raise `CodecError` if it cannot."""


class IdentityCodec:
    """The default codec: payloads travel and are stored as they are."""

    def address_key(self, run_input: JsonValue) -> bytes | None:
        """No key: task addresses are plain SHA-256 hashes."""
        return None

    def encode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        """Return `value` unchanged."""
        return value

    def decode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        """Return `value` unchanged."""
        return value
