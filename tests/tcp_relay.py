"""A TCP relay between a client and a server that can cut every connection at once.

`TcpRelay` listens on a loopback port and pipes bytes both ways to `upstream_port`.
`reset()` aborts every connection it carries (an RST to both ends, as a NAT or a
load balancer dropping its state does): the WebSocket of a client channel drops
mid-call, and the next connection goes through again.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType


@dataclass
class TcpRelay:
    """Relays 127.0.0.1:`port` to 127.0.0.1:`upstream_port`; `reset()` cuts all connections."""

    upstream_port: int
    port: int = 0
    resets: int = 0
    _server: asyncio.Server | None = None
    _live: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT` of the relay, what a client is given."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> TcpRelay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.reset()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    def reset(self) -> None:
        """Abort every connection relayed now (both sides see a reset)."""
        self.resets += 1
        for writer in list(self._live):
            writer.transport.abort()
        self._live.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._live |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))  # noqa: TID251 - a test's plumbing
        finally:
            for end in (writer, up_writer):
                self._live.discard(end)
                end.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.write_eof()
