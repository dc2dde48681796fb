"""Limits the server enforces: of claims and runs, of payloads, and the request body size.

The body size is enforced before a handler reads the body; a payload's (an input, a
result, an event's data) as it is stored, inside the transaction that would store it,
so a refused write leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from aiki_core import PayloadTooLargeError
from aiki_core.wire import to_millis
from aiki_server._rows import dump

if TYPE_CHECKING:
    from pydantic import JsonValue
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True, slots=True)
class Limits:
    """Operational settings the run and claim operations enforce."""

    claim_idle_timeout: timedelta = timedelta(seconds=90)
    """A claim not refreshed for this long is released to the queue."""
    max_tasks_per_run: int = 10_000
    """Task calls one run may record; the next one fails the run with `RunLimitError`."""
    max_payload_bytes: int = 2 * 1024 * 1024
    """The largest payload (input, result, event data) stored, in UTF-8 bytes of its
    JSON; a larger one is refused with `PayloadTooLargeError`."""
    max_events_per_run: int = 10_000
    """Events one run may hold; the next is refused with `RunRecordLimitError`."""
    max_history_per_run: int = 100_000
    """History a run may write (its status moves and new task calls); a worker's next
    write to it fails the run with `RunRecordLimitError`."""
    cleanup_timeout: timedelta = timedelta(seconds=60)
    """How long a cancelled or timed-out run's cleanup may take; then the run ends anyway."""

    def dump_payload(self, value: JsonValue, field: str) -> str:
        """`value` as stored (compact JSON); `PayloadTooLargeError` naming `field` if too large."""
        text = dump(value)
        if len(text) * 4 > self.max_payload_bytes:  # else no character count could exceed it
            size = len(text.encode())
            if size > self.max_payload_bytes:
                raise PayloadTooLargeError(size, self.max_payload_bytes, field)
        return text

    @property
    def claim_idle_ms(self) -> int:
        """`claim_idle_timeout` in milliseconds."""
        return to_millis(self.claim_idle_timeout)

    @property
    def cleanup_ms(self) -> int:
        """`cleanup_timeout` in milliseconds."""
        return to_millis(self.cleanup_timeout)


class BodyTooLarge(HTTPException):
    """Raised while a body streams past the limit; answered as a 413 wire error."""

    def __init__(self, error: PayloadTooLargeError) -> None:
        super().__init__(status_code=413, detail=error.message)
        self.error = error


class BodyLimitMiddleware:
    """Answers 413 to a body over `max_bytes`, by its Content-Length or as it streams."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_bytes:
            error = PayloadTooLargeError(int(declared), self.max_bytes)
            await JSONResponse(error.to_wire(), status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(PayloadTooLargeError(seen, self.max_bytes))
            return message

        await self.app(scope, counting_receive, send)
