"""A real HTTP proxy between worker processes and a server, that answers badly on demand.

`FaultProxy` listens on a loopback port of the test's own process and forwards each
request to the server, unless its `decide` callback names a `Fault` for it: a status
of its own (with `Retry-After` if asked), a connection dropped before or after the
server handled the request, a body that is no JSON, or a long stall. It keeps a log
of every request it saw (method, path) and what it did with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import anyio
import httpx

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

FaultKind = Literal["status", "drop", "drop_after", "garbage", "stall"]


@dataclass(frozen=True)
class Fault:
    """What the proxy does instead of answering the server's answer."""

    kind: FaultKind
    status: int = 503
    """For `status`: the status answered, with a JSON body that is no Aiki error."""
    retry_after: float | None = None
    """For `status`: the `Retry-After` header sent with it."""
    seconds: float = 1.0
    """For `stall`: how long the request hangs before its connection is dropped."""


@dataclass(frozen=True)
class Seen:
    """One request the proxy received, and the fault it met (`None`: forwarded)."""

    method: str
    path: str
    fault: Fault | None


@dataclass
class FaultProxy:
    """Forwards to `upstream` (`http://127.0.0.1:PORT`), or fails as `decide(method, path)` says."""

    upstream: str
    decide: Callable[[str, str], Fault | None] = lambda method, path: None
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _client: httpx.AsyncClient | None = None

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT` of the proxy, what a worker is given."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FaultProxy:
        self._client = httpx.AsyncClient(base_url=self.upstream, timeout=None)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None and self._client is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        await self._client.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, httpx.HTTPError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; whether the connection stays open."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        path = target.split("?", 1)[0]
        fault = self.decide(method, path)
        self.seen.append(Seen(method, path, fault))
        if fault is not None and fault.kind == "drop":
            return False
        if fault is not None and fault.kind == "stall":
            await anyio.sleep(fault.seconds)
            return False
        if fault is not None and fault.kind in ("status", "garbage"):
            if fault.kind == "garbage":
                status, content, extra = 200, b"<html>not the answer</html>", ""
            else:
                status, content = fault.status, b'{"detail": "injected by the test"}'
                extra = "" if fault.retry_after is None else f"retry-after: {fault.retry_after}\r\n"
            self._answer(writer, status, content, extra)
            await writer.drain()
            return True
        assert self._client is not None
        forwarded = {
            name: value
            for name, value in headers.items()
            if name in ("content-type", "authorization", "user-agent")
        }
        answer = await self._client.request(method, target, content=body, headers=forwarded)
        if fault is not None:  # drop_after: the server did it, the worker never hears so
            return False
        retry_after = answer.headers.get("retry-after")
        extra = "" if retry_after is None else f"retry-after: {retry_after}\r\n"
        self._answer(writer, answer.status_code, answer.content, extra)
        await writer.drain()
        return True

    @staticmethod
    def _answer(writer: asyncio.StreamWriter, status: int, content: bytes, extra: str) -> None:
        writer.write(
            (
                f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                f"content-length: {len(content)}\r\n{extra}\r\n"
            ).encode()
            + content
        )
