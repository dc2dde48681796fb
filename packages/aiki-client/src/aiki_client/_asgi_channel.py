"""The client channel to an app in this process (`httpx.ASGITransport`).

A client on an embedded server (tests, single-process deployments) reaches it through
httpx's ASGI transport, which carries no WebSocket. The channel then speaks ASGI's
WebSocket messages to the app directly: the same frames, the same server code, no
bytes on a wire.
"""

from __future__ import annotations

import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio

from aiki_client._channel import Refused

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from aiki_client._channel import Opener, Session

Message = dict[str, Any]


class _AsgiSession:
    """ASGI WebSocket messages to and from the app, as the channel's session."""

    def __init__(
        self,
        to_app: MemoryObjectSendStream[Message],
        from_app: MemoryObjectReceiveStream[Message],
    ) -> None:
        self._to_app = to_app
        self._from_app = from_app

    async def send_bytes(self, data: bytes) -> None:
        """Hand one binary message to the app."""
        await self._to_app.send({"type": "websocket.receive", "bytes": data})

    async def receive_bytes(self) -> bytes:
        """The app's next binary message; `ConnectionError` once it closed."""
        message = await self._from_app.receive()
        if message["type"] == "websocket.send" and message.get("bytes") is not None:
            data: bytes = message["bytes"]
            return data
        raise ConnectionError(f"the channel closed: {message.get('code', message['type'])}")


def asgi_opener(app: Any, url: str, headers: Mapping[str, str]) -> Opener:
    """Opens the channel at `url` on the ASGI `app`, with the client's `headers`."""
    parts = urlsplit(url)
    scope: Message = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "wss" if parts.scheme == "https" else "ws",
        "server": (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)),
        "client": ("127.0.0.1", 123),
        "root_path": "",
        "path": parts.path,
        "raw_path": parts.path.encode(),
        "query_string": b"",
        "headers": [
            (b"host", parts.netloc.encode()),
            *((name.lower().encode(), value.encode()) for name, value in headers.items()),
        ],
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }

    @asynccontextmanager
    async def open_channel() -> AsyncIterator[Session]:
        to_app, app_receives = anyio.create_memory_object_stream[Message](math.inf)
        app_sends, from_app = anyio.create_memory_object_stream[Message](math.inf)

        async def run_app() -> None:
            try:
                await app(dict(scope), app_receives.receive, app_sends.send)
            finally:
                app_sends.close()  # the app is done: the channel's reader learns it

        async with to_app, app_receives, app_sends, from_app, anyio.create_task_group() as tg:
            tg.start_soon(run_app)
            await to_app.send({"type": "websocket.connect"})
            first = await from_app.receive()
            if first["type"] == "websocket.http.response.start":
                raise Refused(int(first["status"]))
            if first["type"] != "websocket.accept":
                raise Refused(403)  # closed before accepting: how ASGI refuses without a body
            try:
                yield _AsgiSession(to_app, from_app)
            finally:
                with anyio.CancelScope(shield=True):
                    await to_app.send({"type": "websocket.disconnect", "code": 1000})
                tg.cancel_scope.cancel()

    return open_channel
