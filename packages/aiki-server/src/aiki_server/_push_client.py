"""The HTTP side of push delivery: one signed `POST` to an endpoint, and what it came to.

Every push of the server (a claimed run to a workflow endpoint, a task attempt to a
task endpoint) goes through `PushClient.push`, which never raises for anything the
endpoint does: it answers a `PushResult` that says whether the push succeeded (a 2xx
answer within the endpoint's timeout, read whole) and, when not, why in a few words
("HTTP 503", "connection refused", "timed out after 60 s"), with the endpoint's
`Retry-After`. Redirects are not followed (a 3xx is a failed push: the server signs
for the URL it was given, and sends nowhere else), and at most `max_answer_bytes` of
an answer are read, so a hostile endpoint cannot fill the server's memory.
"""

from __future__ import annotations

import errno
import math
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from time import perf_counter, time
from typing import TYPE_CHECKING, Literal

import anyio
import httpx

from aiki_core.push import sign_push

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiki_core.push import PushSecret

PushOutcome = Literal["ok", "refused", "timeout", "connection", "too_large"]
"""How a push ended (the `outcome` label of the push metrics): answered 2xx; answered
another status; no answer in time; no connection (or it broke); an answer too large."""

MAX_ANSWER_BYTES = 1024 * 1024
"""The most of an endpoint's answer the server reads (1 MiB)."""
MAX_RETRY_AFTER = 86_400.0
"""The longest `Retry-After` read, in seconds (a day; the back-off caps it further)."""


@dataclass(frozen=True, slots=True)
class PushResult:
    """What one push came to."""

    outcome: PushOutcome
    answer: bytes
    """The body of a 2xx answer (empty otherwise)."""
    error: str | None
    """Why the push failed, in a few words; `None` when it succeeded."""
    retry_after: float | None
    """The endpoint's `Retry-After`, in seconds from now, when it sent one."""
    seconds: float
    """How long the push took."""
    size: int = 0
    """The bytes of the answer read: all of a 2xx one, or more than the limit."""

    @property
    def ok(self) -> bool:
        """Whether the endpoint took the push (answered 2xx, read whole)."""
        return self.outcome == "ok"


class PushClient:
    """Signs and sends pushes over one pool of connections; `aclose` when done."""

    def __init__(
        self,
        *,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._max_answer_bytes = max_answer_bytes
        # no connection limit of the pool's own: each endpoint's `max_in_flight` bounds
        # its pushes. `trust_env=False`: no proxy, `.netrc` credential or CA bundle from
        # the environment goes to an endpoint's URL
        self._http = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
            transport=transport,
        )

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def push(
        self, url: str, body: bytes, secrets: Sequence[PushSecret], timeout: float
    ) -> PushResult:
        """`POST` `body` (JSON) to `url`, signed with each of `secrets`, within `timeout` s."""
        headers = {
            "content-type": "application/json",
            # the limit applies to what is read: no compressed answer that inflates past it
            "accept-encoding": "identity",
            **sign_push(body, secrets),
        }
        started = perf_counter()
        try:
            # httpx's timeout bounds each step (connect, each read); this one the whole
            # push, however slowly an endpoint trickles its answer
            with anyio.fail_after(timeout):
                request = self._http.build_request(
                    "POST", url, content=body, headers=headers, timeout=timeout
                )
                response = await self._http.send(request, stream=True)
                try:
                    return await self._read(response, started)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            return _failed("timeout", f"timed out after {timeout:g} s", started)
        except httpx.TransportError as exc:
            return _failed("connection", _connection_error(exc), started)
        except httpx.InvalidURL as exc:  # one the URL check let through: no request to send
            return _failed("connection", f"invalid URL: {exc}"[:200], started)

    async def _read(self, response: httpx.Response, started: float) -> PushResult:
        """The push's result from its answer: a 2xx body is read, up to the limit."""
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if not 200 <= response.status_code < 300:
            return _failed("refused", f"HTTP {response.status_code}", started, retry_after)
        answer = bytearray()
        async for chunk in response.aiter_raw():
            answer += chunk
            if len(answer) > self._max_answer_bytes:
                error = f"answer over {self._max_answer_bytes} bytes"
                seconds = perf_counter() - started
                return PushResult("too_large", b"", error, retry_after, seconds, len(answer))
        return PushResult("ok", bytes(answer), None, None, perf_counter() - started, len(answer))


def _failed(
    outcome: PushOutcome, error: str, started: float, retry_after: float | None = None
) -> PushResult:
    return PushResult(outcome, b"", error, retry_after, perf_counter() - started)


def _connection_error(exc: httpx.TransportError) -> str:
    """A failed connection in a few words: the OS's reason when there is one."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "not an http:// or https:// URL"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {exc}"[:200] if str(exc) else "connection failed"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed before an answer"
    return f"connection lost: {type(exc).__name__}"


def parse_retry_after(value: str | None) -> float | None:
    """A `Retry-After` header in seconds from now: delay-seconds or an HTTP date.

    At most `MAX_RETRY_AFTER`; `None` when it is neither (an endpoint's header is
    untrusted: no value of it may raise).
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # str.isdigit alone takes "²", which float refuses
        return min(float(text), MAX_RETRY_AFTER)
    try:
        seconds = parsedate_to_datetime(text).timestamp() - time()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else None
