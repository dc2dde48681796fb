"""The channel: the client's calls as frames on one WebSocket per server (websockets).

A busy worker makes a call per task result, and a busy application a start and a
wait per run. On the channel each call is one binary message, answered by one, on a
connection opened once (`aiki_core.wire` has the frame format): the server parses no
request line or headers, and calls of every run travel together, multiplexed (a
long-poll waits while task records pass). It is opened on the first call, and again
on the first call after it dropped. The connection is the `websockets` library's
(asyncio, its framing in C), which costs a call about as much client CPU as a
hand-written HTTP/1.1 request did, a seventh of httpx's (bench/README.md).

Where the channel cannot be had, a call goes as a plain HTTP request (`Http`, on
httpx), as it would without a channel: when the opening fails (the server cannot be
reached: the plain request then tries again and fails as HTTP does, with its own
message), and for `PLAIN_HTTP_PERIOD` when the server answers the opening with
anything but the switch or not at all (an older server, a proxy that does not pass
WebSockets, a refused key: the plain request then brings the server's own answer).
Off asyncio (trio), every call is plain HTTP.

A channel that drops with a call in flight raises `ServerUnavailableError`, as a
dropped HTTP request does: the server may have done it; the worker's writes are safe
to send again, and are.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Protocol, TypeAlias
from urllib.parse import urlencode

import anyio
import httpx
import sniffio
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from aiki_client._http import CONNECT_TIMEOUT, READ_TIMEOUT, Answer, unavailable
from aiki_core import ServerUnavailableError
from aiki_core.wire import (
    CHANNEL_PATH,
    ChannelRequest,
    FrameError,
    decode_answer,
    encode_cancel,
    encode_request,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence
    from contextlib import AbstractAsyncContextManager

    from websockets.asyncio.client import ClientConnection

    from aiki_client._http import Http
    from aiki_core import Logger

PLAIN_HTTP_PERIOD = 60.0
"""Seconds calls go as plain HTTP requests after the server refused to open the channel."""
MAX_ANSWER_BYTES = 1024**3
"""The largest answer a channel takes (a claim's runs with their records, a page of runs)."""


class Refused(Exception):
    """The server answered the opening with something other than the switch (`status`)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the server answered the channel's opening with {status}")
        self.status = status


class Dropped(ServerUnavailableError):
    """The channel dropped with the call in flight: the server may have done it."""

    def __init__(self, url: str, cause: BaseException | None) -> None:
        super().__init__(f"the channel to the Aiki server at {url} dropped: {cause!r}")


class _NoFrame(ValueError):
    """A call no frame carries (a target over the frame's line): it goes as plain HTTP."""


class Session(Protocol):
    """An open WebSocket, as the channel uses it."""

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary message."""
        ...

    async def receive_bytes(self) -> bytes:
        """The next binary message; raises once the WebSocket closed."""
        ...


Opener: TypeAlias = "Callable[[], AbstractAsyncContextManager[Session]]"
"""Opens a channel's WebSocket: raises `Refused` if the server answered otherwise."""


def network_opener(
    url: str,
    headers: Mapping[str, str],
    *,
    tls: ssl.SSLContext | bool,
    trust_env: bool,
) -> Opener:
    """Opens the channel at `url` (`http(s)://`) over the network.

    `tls` verifies an `https://` server as the client's plain requests do (a context,
    or `True`/`False`); with `trust_env`, a proxy comes from the environment.
    """
    ws_url = "ws" + url.removeprefix("http")
    context: ssl.SSLContext | None = None
    if url.startswith("https://"):
        # httpx's own context for `True`/`False`: the CAs the plain requests trust (certifi's
        # bundle, or the environment's with `trust_env`), not the system's store
        context = (
            tls
            if isinstance(tls, ssl.SSLContext)
            else httpx.create_ssl_context(verify=tls, trust_env=trust_env)
        )
    user_agent = headers.get("user-agent")
    extra = {name: value for name, value in headers.items() if name != "user-agent"}

    @asynccontextmanager
    async def open_channel() -> AsyncIterator[Session]:
        try:
            connection = await connect(
                ws_url,
                additional_headers=extra,
                user_agent_header=user_agent,
                ssl=context,
                proxy=True if trust_env else None,
                compression=None,  # small frames: compressing costs more than it saves
                open_timeout=CONNECT_TIMEOUT,
                max_size=MAX_ANSWER_BYTES,
            )
        except InvalidStatus as exc:
            raise Refused(exc.response.status_code) from None
        except (InvalidHandshake, TimeoutError) as exc:
            # connected, but no switch (a proxy holding or mangling WebSockets)
            raise Refused(0) from exc
        try:
            yield _Network(connection)
        finally:
            await connection.close()

    return open_channel


class _Network:
    """A `websockets` connection as the channel's session."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary message."""
        await self._connection.send(data)

    async def receive_bytes(self) -> bytes:
        """The next binary message; raises once the WebSocket closed."""
        message = await self._connection.recv()
        if isinstance(message, str):
            raise ConnectionError("the server sent a text message on the channel")
        return message


def _alone(exc: Exception) -> Exception:
    """The one error a task group wrapped (the session's, say), else `exc` itself."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class _Connection:
    """One open channel, served by an asyncio task of its own."""

    def __init__(self, url: str, opener: Opener, read_timeout: float | None) -> None:
        self.url = url
        self.read_timeout = read_timeout
        """Seconds a call waits for its answer (`None`: as long as it takes)."""
        self.calls: dict[int, asyncio.Future[Answer]] = {}
        """The calls in flight, by id: where their answers land."""
        self.opened = anyio.Event()
        self.failure: Exception | None = None
        """Why it could not be opened (or why it closed)."""
        self.alive = True
        self._ids = itertools.count(1)
        self._session: Session | None = None
        self._task = asyncio.create_task(self._serve(opener))  # noqa: TID251 - see the module

    async def _serve(self, opener: Opener) -> None:
        try:
            async with opener() as session:
                self._session = session
                self.opened.set()
                while True:
                    frame = await session.receive_bytes()
                    try:
                        answer = decode_answer(frame)
                    except FrameError as exc:  # not the Aiki server's: drop the channel
                        raise ConnectionError(f"not a channel answer: {exc}") from None
                    call = self.calls.pop(answer.call_id, None)
                    if call is not None and not call.done():
                        call.set_result(Answer(answer.status, answer.body, answer.retry_after))
        except asyncio.CancelledError:
            self.failure = unavailable(self.url, ConnectionError("the channel was closed"))
            raise
        except Exception as exc:
            cause = _alone(exc)
            if isinstance(cause, Refused):
                self.failure = cause
            else:  # unreachable; dropped, reset, timed out, closed by the server
                self.failure = unavailable(self.url, cause)
        finally:
            self.alive = False
            self.opened.set()
            for call in self.calls.values():
                if not call.done():
                    call.set_exception(Dropped(self.url, self.failure))
            self.calls.clear()

    async def call(self, method: str, target: str, body: bytes | None) -> Answer:
        """Send one call and wait for its answer.

        asyncio's own future and timeout, not anyio's: this is the worker's hot path,
        and the connection lives on asyncio anyway.
        """
        call_id = next(self._ids)
        try:
            frame = encode_request(ChannelRequest(call_id, method, target, body))
        except ValueError as exc:
            raise _NoFrame(str(exc)) from exc
        call = self.calls[call_id] = asyncio.get_running_loop().create_future()
        try:
            assert self._session is not None  # open: calls are made once it is
            try:
                await self._session.send_bytes(frame)
            except Exception as exc:  # the connection is gone: maybe sent, maybe not
                raise unavailable(self.url, exc) from exc
            try:
                async with asyncio.timeout(self.read_timeout):
                    answer: Answer = await call
                    return answer
            except BaseException:  # timed out or cancelled: the server may stop it
                # (cancelling the wait cancelled the future too: it is done, unanswered)
                if call.cancelled() or not call.done():
                    await self._cancel(call_id)
                raise
        except TimeoutError as exc:
            raise unavailable(self.url, exc) from exc
        finally:
            self.calls.pop(call_id, None)

    async def _cancel(self, call_id: int) -> None:
        """Tell the server a call is no longer awaited (a long-poll is left), if it can be."""
        if self._session is None or not self.alive:
            return
        with anyio.move_on_after(1, shield=True):
            try:
                await self._session.send_bytes(encode_cancel(call_id))
            except Exception:
                pass

    async def aclose(self) -> None:
        """Close the connection; calls in flight fail as dropped."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)  # noqa: TID251 - reap it


class ChannelHttp:
    """A replica's calls on its channel, or as plain requests on `http` where there is none.

    `opener` opens the channel's WebSocket (`None`: plain requests only); a call waits
    `read_timeout` seconds for its answer, as a plain request does (`None`: no limit).
    """

    def __init__(
        self,
        base_url: str,
        opener: Opener | None,
        http: Http,
        log: Logger,
        *,
        read_timeout: float | None = READ_TIMEOUT,
    ) -> None:
        self.base_url = base_url
        self._read_timeout = read_timeout
        self._opener = opener
        self._http = http
        self._log = log
        self._connection: _Connection | None = None
        self._opening = anyio.Lock()
        self._plain_until = 0.0
        """Until when (monotonic) calls go over plain HTTP: the server refused the channel."""
        self._closed = False
        """Closed: no channel is opened again (a call then fails as a closed httpx client's)."""

    async def send(
        self, method: str, path: str, body: bytes | None, params: Sequence[tuple[str, str]]
    ) -> Answer:
        """Send one call on the channel, or as a plain request where there is none."""
        connection = await self._open()
        if connection is None:
            return await self._http.send(method, path, body, params)
        target = path + (f"?{urlencode(params)}" if params else "")
        try:
            return await connection.call(method, target, body)
        except _NoFrame:  # too long a line for a frame: the server answers it as HTTP
            return await self._http.send(method, path, body, params)
        except Dropped:  # a read dropped unanswered is sent once more, as on HTTP
            if method != "GET" or self._closed:  # not a read, or dropped by the close itself
                raise
        connection = await self._open()
        if connection is None:
            return await self._http.send(method, path, body, params)
        return await connection.call(method, target, body)

    async def _open(self) -> _Connection | None:
        """The open channel, opened now if need be; `None` to use plain HTTP."""
        connection = self._connection
        if connection is not None and connection.alive and connection.opened.is_set():
            return connection
        if (
            self._opener is None
            or time.monotonic() < self._plain_until
            or sniffio.current_async_library() != "asyncio"
        ):
            return None
        async with self._opening:
            connection = self._connection
            if self._closed:  # checked under the lock: `aclose` may have run as we waited
                return None
            if connection is None or not connection.alive:
                url = self.base_url + CHANNEL_PATH
                connection = self._connection = _Connection(url, self._opener, self._read_timeout)
            await connection.opened.wait()
        if connection.alive:
            return connection
        failure = connection.failure
        if isinstance(failure, Refused):
            self._plain_until = time.monotonic() + PLAIN_HTTP_PERIOD
            # a refused key is the plain request's to say; anything else is news
            note = self._log.debug if failure.status in (401, 403) else self._log.info
            note(
                "the server did not open the channel; calls go as plain HTTP requests",
                {"status": failure.status, "seconds": PLAIN_HTTP_PERIOD},
            )
        # else it could not be reached: the plain request says how, as HTTP does
        return None

    async def aclose(self) -> None:
        """Close the channel and the plain HTTP path."""
        self._closed = True
        if self._connection is not None:
            await self._connection.aclose()
        await self._http.aclose()
