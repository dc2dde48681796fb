"""Writes that outlive a server blip: tried again while the run's claim can still hold.

Every write of a run is safe to send twice: the server fences it by the claim's
revision and takes a task record identical to one it holds as already done. So a
failure that may pass (a 5xx, a 503 or 429 with `Retry-After`, a dropped connection,
a timeout, an answer that is no answer) is tried again with a growing back-off, for as
long as the claim can still be valid; then the run is given up to another worker.

The back-off comes from `tenacity` (waits, jitter, a deadline), on anyio's sleep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_before_delay,
    wait_exponential_jitter,
)

from aiki_core import (
    AikiError,
    AuthenticationError,
    ConflictError,
    PayloadTooLargeError,
    ServerError,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiki_core import Logger

T = TypeVar("T")

FIRST_BACKOFF = 0.05
"""Seconds before the second attempt of a write; doubled (with jitter) after each one."""
MAX_BACKOFF = 5.0
"""The longest wait between two attempts, unless the server asked for longer."""

_backoff = wait_exponential_jitter(multiplier=FIRST_BACKOFF, max=MAX_BACKOFF, jitter=FIRST_BACKOFF)


def transient(exc: BaseException) -> bool:
    """A failure that may pass: a 5xx (or 408, 429), a dropped connection, a timeout."""
    return isinstance(exc, ServerError | OSError)


def unsendable(exc: BaseException) -> bool:
    """A body no attempt can send: over the server's limit, or not JSON (a lone surrogate).

    Not JSON is found before sending, as a `ValueError` of the serializer; an
    `AikiError` that is also a `ValueError` (a 400 or 422 answer) is the server's word.
    """
    return isinstance(exc, PayloadTooLargeError) or (
        isinstance(exc, ValueError) and not isinstance(exc, AikiError)
    )


def not_final(exc: BaseException) -> bool:
    """Anything but a refused key, a lost claim or an unsendable body.

    What the report of a run tries again: it is the last write of the run on this
    worker and carries the task records not yet on record, so an answer the worker
    cannot place (a proxy's 403 or 404 page, say) is worth another try too.
    """
    return (
        isinstance(exc, Exception)
        and not isinstance(exc, AuthenticationError | ConflictError)
        and not unsendable(exc)
    )


def asked_wait(exc: BaseException | None) -> float | None:
    """The seconds the server (or a proxy) asked to wait, by `Retry-After`."""
    return exc.retry_after if isinstance(exc, ServerError) else None


def _wait(state: RetryCallState) -> float:
    """The server's `Retry-After` if it gave one, else the next exponential back-off."""
    asked = asked_wait(state.outcome.exception() if state.outcome is not None else None)
    return asked if asked is not None else _backoff(state)


async def retried(
    write: Callable[[], Awaitable[T]],
    *,
    when: Callable[[BaseException], bool],
    within: float,
    log: Logger,
    what: str,
) -> T:
    """`write()`, tried again on failures `when` accepts, for up to `within` seconds.

    The last failure is raised: one `when` refuses at once, another once the next
    wait would end past `within`.
    """
    try:  # the first attempt without tenacity's bookkeeping: nearly every write succeeds
        return await write()
    except Exception as exc:
        if not when(exc):
            raise
        first = exc
    log.warn(f"{what} failed; trying again", {"error": str(first)})
    retrying = AsyncRetrying(
        retry=retry_if_exception(when),
        stop=stop_before_delay(within),
        wait=_wait,
        sleep=anyio.sleep,
        reraise=True,
    )
    asked = asked_wait(first)
    await anyio.sleep(min(FIRST_BACKOFF if asked is None else asked, within))
    async for attempt in retrying:
        with attempt:
            return await write()
    raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover
