"""HTTP/1.1 on asyncio connections, answers parsed by httptools: the client's network path.

A worker sends a request per task result, so the cost of one request is the cost
of a task to the engine. Writing the request bytes straight onto a kept-alive
connection and parsing the answer with httptools (the parser uvicorn uses, in C)
takes about half of aiohttp's client CPU per request (bench/README.md has the
figures), and the client needs little of a general HTTP client: JSON bodies, a few
fixed headers, `Content-Length` or chunked answers, keep-alive, TLS.

Connections are pooled and used by one request at a time; one idle for longer than
the server's keep-alive is closed rather than reused. A request whose connection
could not be opened never reached the server and is tried again with a doubling
back-off (`connect_retries`); a certificate error is not. A kept-alive connection
that closes before any answer byte is, for a GET, tried once more on a fresh one (RFC
9112 §9.3.1); a POST is never sent twice. Every failure is `ServerUnavailableError`.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from typing import TYPE_CHECKING, NamedTuple, cast
from urllib.parse import urlencode, urlsplit

import anyio
import httptools

from aiki_core import ServerUnavailableError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

CONNECT_TIMEOUT = 10.0
"""Seconds to open a connection."""
READ_TIMEOUT = 75.0
"""Seconds to wait for an answer: long-polls hold a request up to a minute."""
CONNECT_BACKOFF = 0.1
"""Seconds before the first new connect attempt; doubled for each one after."""
KEEPALIVE_SECONDS = 4.0
"""Idle connections are closed before uvicorn's 5 s keep-alive could close them under us."""

_REQUEST_TARGET = re.compile(r"/[\x21-\x7e]*")


class Answer(NamedTuple):
    """An HTTP answer: its status, its whole body, and its `Retry-After` header, if any."""

    status: int
    body: bytes
    retry_after: str | None = None


def unavailable(base_url: str, exc: BaseException) -> ServerUnavailableError:
    """The error for a request that could not be carried to `base_url`."""
    return ServerUnavailableError(f"cannot reach the Aiki server at {base_url}: {exc!r}")


class Unreachable(ServerUnavailableError):
    """No connection to the server could be opened: the request never left the client.

    So it is safe to send anywhere else, whatever it does (see `_replicas`).
    """

    def __init__(self, base_url: str, exc: BaseException) -> None:
        super().__init__(f"cannot connect to the Aiki server at {base_url}: {exc!r}")


class _Closed(ConnectionError):
    """The connection closed before the answer was complete."""

    def __init__(self, answered: bool) -> None:
        super().__init__("the connection closed before the answer was complete")
        self.answered = answered
        """Whether any byte of the answer had arrived."""


class _Connection(asyncio.Protocol):
    """One connection: sends a request, parses its answer; one request at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._retry_after: str | None = None
        self._answer: asyncio.Future[Answer] | None = None
        self._answered = False
        self.open = False
        self.used = 0
        """Requests answered on this connection."""
        self.idle_since = time.monotonic()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport, though not always an `asyncio.Transport` by class:
        # uvloop's (the loop uvicorn picks when installed) is not
        self._transport = cast("asyncio.Transport", transport)
        self.open = True

    def data_received(self, data: bytes) -> None:
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(_Closed(self._answered))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        # the one header a worker needs: how long a busy server asked it to wait
        if len(name) == 11 and name.lower() == b"retry-after":
            self._retry_after = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._answer is not None and not self._answer.done():
            status = self._parser.get_status_code()
            self._answer.set_result(Answer(status, b"".join(self._body), self._retry_after))
        if not self._parser.should_keep_alive():
            self.close()

    def _fail(self, exc: BaseException) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)

    async def request(self, data: bytes) -> Answer:
        """Send one whole request and wait for its whole answer."""
        assert self._transport is not None
        self._body = []
        self._retry_after = None
        self._answered = False
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(data)
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                answer = await self._answer
        finally:
            self._answer = None
        self.used += 1
        self.idle_since = time.monotonic()
        return answer

    def close(self) -> None:
        """Close the connection (its request, if any, fails)."""
        self.open = False
        if self._transport is not None:
            self._transport.close()


class SocketHttp:
    """The network path: pooled keep-alive HTTP/1.1 connections (TLS for https)."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        connect_retries: int,
        max_connections: int = 200,
    ) -> None:
        self.base_url = base_url
        self.connect_retries = connect_retries
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        authority = parts.netloc.rpartition("@")[2]
        fixed = {"host": authority, **{name.lower(): value for name, value in headers.items()}}
        self._head = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def send(
        self, method: str, path: str, body: bytes | None, params: Sequence[tuple[str, str]]
    ) -> Answer:
        """Send one request and read the whole answer."""
        target = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        if not _REQUEST_TARGET.fullmatch(target):  # `api_path` encodes; this is the backstop
            raise ValueError(f"not a valid request target: {target!r}")
        head = f"{method} {target} HTTP/1.1\r\n{self._head}"
        if body is None:
            data = (head + "\r\n").encode()
        else:
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            data = head.encode() + body
        async with self._slots:
            connection = self._reuse()
            if connection is not None and method == "GET":
                try:
                    return await self._exchange(connection, data, retry_if_unanswered=True)
                except _RetryFresh:
                    pass
            elif connection is not None:
                return await self._exchange(connection, data)
            return await self._exchange(await self._connect(), data)

    def _reuse(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.open and now - connection.idle_since < KEEPALIVE_SECONDS:
                return connection
            connection.close()
        return None

    async def _exchange(
        self, connection: _Connection, data: bytes, *, retry_if_unanswered: bool = False
    ) -> Answer:
        done = False
        try:
            answer = await connection.request(data)
            done = True
            return answer
        except _Closed as exc:
            if retry_if_unanswered and not exc.answered:
                raise _RetryFresh from exc
            raise unavailable(self.base_url, exc) from exc
        except (OSError, TimeoutError, httptools.HttpParserError) as exc:
            raise unavailable(self.base_url, exc) from exc
        finally:
            if done and connection.open and not self._closed:
                self._idle.append(connection)
            else:  # failed or cancelled mid-answer: its state is unknown
                connection.close()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        delay = CONNECT_BACKOFF
        for attempt in range(self.connect_retries + 1):
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    _, connection = await loop.create_connection(
                        _Connection, self._host, self._port, ssl=self._ssl
                    )
                return connection
            except ssl.SSLError as exc:  # a certificate will not mend itself
                raise unavailable(self.base_url, exc) from exc
            except (OSError, TimeoutError) as exc:  # refused, no route, DNS, timed out
                if attempt == self.connect_retries:
                    raise Unreachable(self.base_url, exc) from exc
            await anyio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close the idle connections (one in use closes when its request ends)."""
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()


class _RetryFresh(Exception):
    """A reused connection closed before answering a GET: send it once more, fresh."""
