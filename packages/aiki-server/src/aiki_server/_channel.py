"""The client channel: a client's API calls (a worker's above all) as frames on one WebSocket.

`ClientChannel` is the outermost ASGI layer. A WebSocket opened at
`/api/v1/channel` is admitted as an HTTP request would be (its `Host`, its API key);
every frame on it (`aiki_core.wire`'s frame format) then goes through the same stack
as an HTTP request, with the headers of the opening request: the key is checked and
the namespace set per call, body limits and fencing apply, metrics count it, and the
answer is the one HTTP would give. Calls run concurrently (a long-poll does not hold
up a task record), up to `MAX_CALLS_IN_FLIGHT`; then the channel reads no more
frames until one ends. Writes arriving together share commits as any concurrent
writes do (SQLite's group commit).

What the channel adds to HTTP it saves: a connection, a request line and headers to
parse, per call. A frame that does not parse is answered 400 when its call id can be
read; otherwise, or for a text message, the channel is closed (1003, 1007): one
client's bad frame touches no other connection. A key revoked while the channel is
open closes it (4401) within `KEY_CACHE_TTL` and some: the client's next opening is
then refused with the 401.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import anyio

from aiki_core import InvalidRequestError
from aiki_core.wire import (
    CANCEL,
    CHANNEL_PATH,
    MAX_CALLS_IN_FLIGHT,
    ChannelAnswer,
    ChannelRequest,
    FrameError,
    decode_request,
    encode_answer,
)
from aiki_server._auth import KEY_CACHE_TTL
from aiki_server._errors import error_response, response_for
from aiki_server._logs import component

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from aiki_server._auth import Admission
    from aiki_server._metrics import Metrics

_log = component("channel")
_access = logging.getLogger("uvicorn.access")
"""uvicorn's access log (on with `--access-log`), where each call has its line too."""

REVOKED = 4401
"""Close code of a channel whose key no longer opens anything."""
_UNSUPPORTED_DATA = 1003
_INVALID_DATA = 1007
_DROPPED = {"type": "http.disconnect"}


class ClientChannel:
    """Serves the client channel's WebSocket; everything else goes on to `app`."""

    def __init__(self, app: ASGIApp, admission: Admission, metrics: Metrics, prefix: str) -> None:
        self.app = app
        self.admission = admission
        self.metrics = metrics
        self.prefix = prefix
        self.path = prefix + CHANNEL_PATH

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a channel opened at its path; pass anything else on."""
        if scope["type"] == "websocket" and scope["path"] == self.path:
            await _Connection(self, scope, receive, send).serve()
        else:
            await self.app(scope, receive, send)


class _Connection:
    """One open channel: reads frames, answers each call as it ends."""

    def __init__(self, channel: ClientChannel, scope: Scope, receive: Receive, send: Send):
        self.channel = channel
        self.scope = scope
        self.receive = receive
        self.send = send
        self.closed = anyio.Event()
        """Set once the channel is closed, by either side."""
        self._closing = False
        self.ended = "closed"
        """How it ended, for the metrics."""
        # uncontended, neither yields to the event loop: a call costs no extra loop turn
        self._sending = anyio.Lock(fast_acquire=True)
        self._calls = anyio.Semaphore(MAX_CALLS_IN_FLIGHT, fast_acquire=True)
        self._running: dict[int, anyio.CancelScope] = {}
        """The calls in flight, by id: a cancel frame cancels one."""
        self._tasks: dict[asyncio.Task[None], anyio.CancelScope] = {}
        """Every call's task, until it ends, with the scope the channel's end cancels."""
        self._base = _http_scope(scope)

    async def serve(self) -> None:
        """Admit the opening, then serve frames until either side closes."""
        if (await self.receive())["type"] != "websocket.connect":
            return
        metrics = self.channel.metrics
        refusal = await self.channel.admission.refusal(dict(self._base))
        if refusal is not None:
            metrics.channel("refused")
            await self._refuse(refusal)
            return
        await self.send({"type": "websocket.accept"})
        metrics.channel("opened")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_key, tg.cancel_scope)
                try:
                    await self._read()
                finally:
                    tg.cancel_scope.cancel()
                    await self._end_calls()
        finally:
            self.closed.set()
            metrics.channel(self.ended)

    async def _end_calls(self) -> None:
        """Cancel the calls in flight (the client left: their answers have nowhere to go).

        Returns once every call ended, as a task group would: a cancel of the channel's
        own task meanwhile (a server shutting down) is raised only after that.
        """
        for scope in self._tasks.values():
            scope.cancel()
        interrupted: asyncio.CancelledError | None = None
        with anyio.CancelScope(shield=True):  # the channel's own scope is cancelled
            while pending := [task for task in self._tasks if not task.done()]:
                try:
                    await asyncio.wait(pending)
                except asyncio.CancelledError as exc:  # asyncio's own, past any shield
                    interrupted = exc
        if interrupted is not None:
            raise interrupted

    async def _refuse(self, refusal: Any) -> None:
        """Answer the opening with the refusal as HTTP where the server can, else close."""
        if "websocket.http.response" not in self.scope.get("extensions", {}):
            await self.send({"type": "websocket.close", "code": 1008})
            return
        headers = [(k, v) for k, v in refusal.raw_headers if k != b"content-length"]
        start = {"status": refusal.status_code, "headers": headers}
        await self.send({"type": "websocket.http.response.start", **start})
        await self.send({"type": "websocket.http.response.body", "body": refusal.body})

    async def _read(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                return
            frame = message.get("bytes")
            if frame is None:
                self.ended = "invalid"
                await self._close(_UNSUPPORTED_DATA, "the channel carries binary frames only")
                return
            try:
                request = decode_request(frame)
            except FrameError as exc:
                if exc.call_id is None:
                    self.ended = "invalid"
                    await self._close(_INVALID_DATA, str(exc))
                    return
                await self._answer_error(exc.call_id, exc)
                continue
            if request.method == CANCEL:
                running = self._running.get(request.call_id)
                if running is not None:
                    running.cancel()
                continue
            await self._calls.acquire()
            self.channel.metrics.channel_call()
            scope = self._running[request.call_id] = anyio.CancelScope()
            whole = anyio.CancelScope()
            # a bare task, not a task group's: a fifth of the cost (the server runs on
            # asyncio), and `_end_calls` cancels and waits for it as a task group would
            task = asyncio.create_task(self._call(request, scope, whole))  # noqa: TID251
            self._tasks[task] = whole
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        """Drop an ended call's task; log what escaped it (a task group would raise it)."""
        del self._tasks[task]
        error = None if task.cancelled() else task.exception()
        if error is not None:
            _log.error("a channel call failed", {"error": repr(error)})

    async def _call(
        self, request: ChannelRequest, scope: anyio.CancelScope, whole: anyio.CancelScope
    ) -> None:
        """Answer one call.

        `scope` (its cancel frame's) covers the work; `whole` (the channel's end) the
        sending of its answer too.
        """
        answer: ChannelAnswer | None = None
        try:
            with whole:
                with scope:
                    try:
                        answer = await self._dispatch(request)
                    except Exception as exc:  # a bug below the stack's own error handling
                        _log.error(
                            "a channel call failed",
                            {"target": request.target, "error": repr(exc)},
                        )
                        response = response_for(exc, self._base)
                        answer = ChannelAnswer(
                            request.call_id, response.status_code, bytes(response.body)
                        )
                    finally:
                        if self._running.get(request.call_id) is scope:
                            del self._running[request.call_id]
                if answer is not None:  # else cancelled by its caller: it waits for nothing
                    await self._deliver(answer)
        finally:
            # a call is in flight until its answer is sent: a client that reads no answers
            # stops the channel reading its frames, rather than the server holding them all
            self._calls.release()

    async def _dispatch(self, request: ChannelRequest) -> ChannelAnswer:
        """Pass one call through the HTTP stack; its answer."""
        raw_path, _, query = request.target.partition("?")
        body = request.body or b""
        headers = list(self._base["headers"])
        if request.body is not None:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        scope = {
            **self._base,
            "method": request.method,
            # as an HTTP server hands a path on: percent-decoded, the raw one beside it
            "path": self.channel.prefix + unquote(raw_path),
            "raw_path": (self.channel.prefix + raw_path).encode(),
            "query_string": query.encode(),
            "headers": headers,
        }
        sent = False
        status = 500
        retry_after: str | None = None
        chunks: list[bytes] = []

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self.closed.wait()  # a long-poll watching for its caller to leave
            return _DROPPED

        async def send(message: Message) -> None:
            nonlocal status, retry_after
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == b"retry-after":
                        retry_after = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.channel.app(scope, receive, send)
        if _access.isEnabledFor(logging.INFO):  # `--access-log`: a line per call, as uvicorn's
            client = scope.get("client")
            _access.info(
                '%s - "%s %s HTTP/%s" %d',
                f"{client[0]}:{client[1]}" if client else "",
                request.method,
                quote(scope["path"]) + (f"?{query}" if query else ""),
                scope["http_version"],
                status,
            )
        return ChannelAnswer(request.call_id, status, b"".join(chunks), retry_after)

    async def _answer_error(self, call_id: int, exc: FrameError) -> None:
        response = error_response(InvalidRequestError(f"not a channel call: {exc}"))
        await self._deliver(ChannelAnswer(call_id, response.status_code, bytes(response.body)))

    async def _deliver(self, answer: ChannelAnswer) -> None:
        async with self._sending:
            if self._closing or self.closed.is_set():
                return
            try:
                await self.send({"type": "websocket.send", "bytes": encode_answer(answer)})
            except Exception:  # the connection is gone: the worker sends the call again
                self._closing = True

    async def _close(self, code: int, reason: str) -> None:
        async with self._sending:
            if not self._closing:
                self._closing = True
                await self.send({"type": "websocket.close", "code": code, "reason": reason[:120]})

    async def _watch_key(self, scope: Any) -> None:
        """Close the channel once its key no longer opens anything (revoked)."""
        while True:
            await anyio.sleep(KEY_CACHE_TTL)
            try:
                refusal = await self.channel.admission.refusal(dict(self._base))
            except Exception:  # the key store is away: the calls themselves will say
                continue
            if refusal is not None and refusal.status_code == 401:
                _log.info("closing a channel whose API key was revoked", {})
                self.ended = "revoked"
                await self._close(REVOKED, "the API key was revoked")
                scope.cancel()
                return


def _http_scope(scope: Scope) -> dict[str, Any]:
    """The HTTP scope each call of a channel opened with `scope` starts from."""
    base = {key: value for key, value in scope.items() if key != "subprotocols"}
    base["type"] = "http"
    base["http_version"] = "1.1"
    base["scheme"] = "https" if scope.get("scheme") == "wss" else "http"
    base["method"] = "GET"
    base["headers"] = [
        (name, value)
        for name, value in scope["headers"]
        if name not in (b"upgrade", b"connection", b"content-length", b"content-type")
        and not name.startswith(b"sec-websocket-")
    ]
    return base
