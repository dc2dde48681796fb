"""The payload codec protocol.

A codec transforms every user payload on its way out of the process (run input and
result, task input and result, event data, error details) and back on its way in.
`aiki-crypto` provides an encrypting one; `IdentityCodec` (the default) changes
nothing. The server never needs to read a payload, so it only ever stores what
`encode` returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from pydantic import JsonValue

__all__ = ["CodecContext", "IdentityCodec", "PayloadCodec"]


@dataclass(frozen=True, slots=True)
class CodecContext:
    """Where a payload belongs; an encrypting codec binds its ciphertext to it.

    `run_id` is the run the payload belongs to (`schedule:<id>` for a schedule's
    input, which every run it fires shares); `field` names the slot, such as
    `"input"`, `"result"`, `"error"`, `"task:<address>:<occurrence>:result"` or
    `"event:<name>"`. The constructors below build every slot Aiki uses, so the
    side that seals a payload and the side that opens it agree.
    """

    run_id: str
    field: str

    @classmethod
    def run_input(cls, run_id: str, schedule_id: str | None = None) -> Self:
        """A run's input: sealed to the run, or to its schedule when one fired it."""
        if schedule_id is not None:
            return cls.schedule_input(schedule_id)
        return cls(run_id, "input")

    @classmethod
    def schedule_input(cls, schedule_id: str) -> Self:
        """A schedule's input, shared by the runs it fires."""
        return cls(f"schedule:{schedule_id}", "input")

    @classmethod
    def run(cls, run_id: str, part: Literal["result", "error"]) -> Self:
        """A run's result or error."""
        return cls(run_id, part)

    @classmethod
    def task(
        cls, run_id: str, address: str, occurrence: int, part: Literal["input", "result", "error"]
    ) -> Self:
        """The input, result or error of one task call of a run."""
        return cls(run_id, f"task:{address}:{occurrence}:{part}")

    @classmethod
    def event(cls, run_id: str, name: str) -> Self:
        """The data of an event sent to a run."""
        return cls(run_id, f"event:{name}")


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
