"""The client channel's server side, driven in process with ASGI WebSocket messages.

Each test plays the client's side of one channel on a live app: it hands the app
the frames, and takes (or, as a client that stopped reading, never takes) its answers.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import TYPE_CHECKING, Any

import anyio
from websockets.asyncio.client import connect

from aiki_core.wire import ChannelRequest, decode_answer, encode_request
from aiki_server import _channel
from aiki_server._channel import ClientChannel
from aiki_server.testing import server_process

if TYPE_CHECKING:
    from pathlib import Path

    import pytest
    from starlette.types import Message

    from server_api import Harness

SCOPE: dict[str, Any] = {
    "type": "websocket",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "scheme": "ws",
    "server": ("aiki", 80),
    "client": ("127.0.0.1", 123),
    "root_path": "",
    "path": "/api/v1/channel",
    "raw_path": b"/api/v1/channel",
    "query_string": b"",
    "headers": [(b"host", b"aiki")],
    "subprotocols": [],
    "extensions": {"websocket.http.response": {}},
}


async def test_a_client_that_reads_no_answers_stops_the_channel_reading_its_frames(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers the client does not take count as calls in flight: the server's memory is
    bounded by the channel's limit, not by how many frames a client can push."""
    limit = 4
    monkeypatch.setattr(_channel, "MAX_CALLS_IN_FLIGHT", limit)
    to_app, app_receives = anyio.create_memory_object_stream[dict[str, Any]](math.inf)
    taken = 0
    """Frames the channel read."""
    stuck = 0
    """Answers it tried to send (one at a time: the rest wait their turn)."""
    accepted = anyio.Event()
    never = anyio.Event()

    async def receive() -> Message:
        nonlocal taken
        message = await app_receives.receive()
        if message["type"] == "websocket.receive":
            taken += 1
        return message

    async def send(message: Message) -> None:
        nonlocal stuck
        if message["type"] == "websocket.accept":
            accepted.set()
        elif message["type"] == "websocket.send":
            stuck += 1
            await never.wait()  # the client's socket buffer is full: it reads nothing

    frames = 200
    async with to_app, app_receives, anyio.create_task_group() as tg:
        tg.start_soon(harness.app, dict(SCOPE), receive, send)
        await to_app.send({"type": "websocket.connect"})
        await accepted.wait()
        for call_id in range(1, frames + 1):
            frame = encode_request(ChannelRequest(call_id, "GET", "/workers", None))
            await to_app.send({"type": "websocket.receive", "bytes": frame})
        with anyio.fail_after(30):
            while not stuck:  # noqa: ASYNC110 - the app's own progress
                await anyio.sleep(0.01)
        # the channel may read one frame more (it then waits for a call to end), no more
        with anyio.move_on_after(1):
            while taken <= limit + 1:  # noqa: ASYNC110 - the app's own progress
                await anyio.sleep(0.01)
        assert taken <= limit + 1, f"{taken} frames read, {stuck} answers held, {limit} allowed"
        tg.cancel_scope.cancel()


async def test_a_call_on_the_channel_has_its_line_in_the_access_log(
    db_url: str, tmp_path: Path
) -> None:
    """`--access-log` logs one line per request: a call on the channel is one."""
    log = tmp_path / "server.log"
    args = ("--log-format", "json", "--access-log")
    async with server_process(db_url, *args, log=log) as server:
        url = "ws" + server.base_url.removeprefix("http") + "/api/v1/channel"
        async with connect(url, compression=None) as ws:
            await ws.send(encode_request(ChannelRequest(1, "GET", "/runs?limit=5", None)))
            frame = await ws.recv()
            assert isinstance(frame, bytes)
            assert decode_answer(frame).status == 200
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    requests = {
        (line["method"], line["path"], line["status"])
        for line in lines
        if line["component"] == "uvicorn.access"
    }
    assert ("GET", "/api/v1/runs?limit=5", 200) in requests, requests


class _Open:
    """An admission that lets every channel open (the stack under test has no keys)."""

    async def refusal(self, scope: Any) -> None:
        return None


class _Uncounted:
    """Metrics that count nothing."""

    def channel(self, event: str) -> None: ...

    def channel_call(self) -> None: ...


async def test_a_server_shutting_down_ends_the_channel_only_after_its_calls() -> None:
    """uvicorn, past its graceful timeout, cancels the channel's task once (asyncio's own
    cancel, which no anyio shield holds): a call in a shielded write still ends first."""
    call_started, call_ended = anyio.Event(), anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        call_started.set()
        with anyio.CancelScope(shield=True):  # a write that commits whatever happens
            await anyio.sleep(0.3)
        call_ended.set()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "websocket.connect"})
    frame = encode_request(ChannelRequest(1, "POST", "/runs", b"{}"))
    inbox.put_nowait({"type": "websocket.receive", "bytes": frame})

    async def send(message: Any) -> None: ...

    channel = ClientChannel(app, _Open(), _Uncounted(), "/api/v1")  # type: ignore[arg-type]
    serving = asyncio.create_task(channel(dict(SCOPE), inbox.get, send))  # noqa: TID251
    await call_started.wait()
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1012})  # uvicorn's shutdown
    await anyio.sleep(0.05)  # the channel waits for its call
    serving.cancel()  # "timeout graceful shutdown exceeded"
    try:
        await serving
    except asyncio.CancelledError:
        pass
    assert call_ended.is_set(), "the channel ended while its call still ran"
    assert serving.cancelled()  # and the cancel was not swallowed
