"""The worker's per-task requests, served without FastAPI's per-request machinery.

A task record and a run's transition are most of the requests a busy server gets:
one per task. For them, `HotPath` (the layer inside `ApiKeyAuth`) parses
the body straight into its model with pydantic's JSON parser and calls `WorkerWrites`,
skipping FastAPI's routing, dependency solving and validation, which cost about as
much CPU as the transaction itself. Everything else goes to the FastAPI app: other
routes, and any body that is too large or does not parse or validate, so those get
the app's documented answers (413, 400, 422). Errors of the call itself leave in the
same wire shape as from the app (`_errors.response_for`).

The FastAPI routes of these two calls stay: they describe them in the OpenAPI
document and answer the requests the hot path hands on. Both call the same
functions below.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import ValidationError

from aiki_core.wire import (
    ID_PATTERN,
    RecordTaskRequest,
    TransitionRunRequest,
    TransitionRunResponse,
)
from aiki_server._auth import NAMESPACE_SCOPE_KEY
from aiki_server._errors import response_for
from aiki_server._metrics import ROUTE_SCOPE_KEY

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pydantic import BaseModel
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from aiki_server._worker_writes import WorkerWrites

# a malformed run id goes on to the app, which refuses it like any route does
_RUN_CALL = re.compile(rf"^/api/v1/runs/({ID_PATTERN})/(tasks|transition)$")
_JSON_HEADERS = [(b"content-type", b"application/json")]
_ROUTES = {call: f"/api/v1/runs/{{run_id}}/{call}" for call in ("tasks", "transition")}
"""The route template of each call, for the metrics."""


async def record_task(
    writes: WorkerWrites, namespace: str, run_id: str, body: RecordTaskRequest
) -> BaseModel:
    """Record one task attempt of a claimed run of `namespace`."""
    return await writes.record_task(namespace, run_id, body)


async def transition(
    writes: WorkerWrites, namespace: str, run_id: str, body: TransitionRunRequest
) -> BaseModel:
    """Complete, fail, suspend or release a claimed run of `namespace`."""
    return TransitionRunResponse(run=await writes.transition(namespace, run_id, body))


_CALLS: dict[str, tuple[type[BaseModel], Callable[..., Awaitable[BaseModel]]]] = {
    "tasks": (RecordTaskRequest, record_task),
    "transition": (TransitionRunRequest, transition),
}


class HotPath:
    """Serves valid task records and transitions itself; hands everything else to `app`.

    It sits inside `ApiKeyAuth`, which put the caller's namespace into the scope.
    """

    def __init__(self, app: ASGIApp, writes: WorkerWrites, max_body_bytes: int) -> None:
        self.app = app
        self.writes = writes
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer the call, or pass the request on unchanged."""
        match = None
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _RUN_CALL.match(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        scope[ROUTE_SCOPE_KEY] = _ROUTES[match[2]]
        messages, body = await self._read(receive)
        model_type, call = _CALLS[match[2]]
        try:
            request = None if body is None else model_type.model_validate_json(body)
        except ValidationError:
            request = None
        if request is None:  # too large, or not a valid body: the app answers it
            await self.app(scope, _replay(messages, receive), send)
            return
        try:
            answer = await call(self.writes, scope[NAMESPACE_SCOPE_KEY], match[1], request)
        except Exception as exc:
            await response_for(exc, scope)(scope, receive, send)
            return
        content = answer.model_dump_json().encode()
        headers = [*_JSON_HEADERS, (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _read(self, receive: Receive) -> tuple[list[Message], bytes | None]:
        """The request's messages, and its body unless it is too large."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, None
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return messages, None
            if not message.get("more_body", False):
                return messages, b"".join(m.get("body", b"") for m in messages)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives back the messages already read, then reads on."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
