"""Limits the server enforces: of claims and runs, and the request body size.

The body size is enforced before a handler reads the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from aiki_core import PayloadTooLargeError
from aiki_core.wire import to_millis

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True, slots=True)
class Limits:
    """Operational settings the run and claim operations enforce."""

    claim_idle_timeout: timedelta = timedelta(seconds=90)
    """A claim not refreshed for this long is released to the queue."""
    max_tasks_per_run: int = 10_000
    """Task calls one run may record; the next one fails the run with `RunLimitError`."""
    cleanup_timeout: timedelta = timedelta(seconds=60)
    """How long a cancelled or timed-out run's cleanup may take; then the run ends anyway."""

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
