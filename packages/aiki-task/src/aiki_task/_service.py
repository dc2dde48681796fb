"""`asgi_app`: a task service, the endpoint the server pushes task attempts to.

A plain ASGI application (no web framework needed; mount it in one or serve it with
any ASGI server). Each request is one attempt of a task call made by a run elsewhere:

1. only `POST` on its path; a body over `max_body_bytes` is refused (413) unread;
2. the signature is checked (`aiki_core.push.PushVerifier`): 401 and nothing runs
   when it does not hold (wrong key, tampered body, too old, replayed);
3. the body must be a `PushedTask` (422) naming a task the service has (404);
4. the input is opened by the codec, validated against the task's input type, and
   the function runs once, bounded by the task's timeout; the answer (200) is a
   `PushedTaskAnswer`: the result sealed by the codec, or the error.

Retries are not run here: the calling run's retry policy decides, and each retry is
a new push. A failure of the task is an answer, not an HTTP error, so the server can
tell "the task failed" from "the endpoint is failing".
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError

from aiki_core import (
    AikiError,
    CodecContext,
    ConsoleLogger,
    ErrorInfo,
    IdentityCodec,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PayloadValidationError,
    PushSignatureError,
)
from aiki_core.push import PushVerifier
from aiki_core.sdk import TaskAttemptInfo
from aiki_core.wire import PushedTask, PushedTaskAnswer

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import timedelta

    from aiki_core import Logger, PayloadCodec
    from aiki_core.push import PushSecret
    from aiki_task._task import Task

__all__ = ["ASGIApp", "asgi_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application, as Starlette's `mount` and every ASGI server take it."""

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""Twice the server's default request limit: a pushed input is one the server accepted."""


def asgi_app(
    tasks: Iterable[Task[Any, Any]],
    secrets: Iterable[str | PushSecret],
    *,
    codec: PayloadCodec | None = None,
    path: str = "/",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    log: Logger | None = None,
) -> ASGIApp:
    """An ASGI app that runs pushed attempts of `tasks`, for a task endpoint.

        app = FastAPI()
        app.mount("/aiki", aiki_task.asgi_app([resize_image], secrets=[SECRET]))

    `secrets` are the endpoint's push secrets (the one its creation showed, and the
    new one during a rotation). `codec` opens inputs and seals results and errors;
    it must be the calling workers' codec (for an encrypting one, their keys).
    `path` is where it answers, relative to where it is mounted.
    """
    by_name: dict[str, Task[Any, Any]] = {}
    for task in tasks:
        if task.name in by_name:
            raise ValueError(f"two tasks are named {task.name!r}")
        by_name[task.name] = task
    return _TaskService(
        by_name,
        PushVerifier(secrets),
        codec or IdentityCodec(),
        path=path.rstrip("/") or "/",
        max_body_bytes=max_body_bytes,
        log=log or ConsoleLogger(),
    )


class _Refused(Exception):
    """A request answered with an error, and nothing run."""

    def __init__(
        self, error: AikiError, status: int | None = None, allow: bytes | None = None
    ) -> None:
        self.error = error
        self.status = error.status_code if status is None else status
        self.headers = [] if allow is None else [(b"allow", allow)]


class _TaskService:
    def __init__(
        self,
        tasks: dict[str, Task[Any, Any]],
        verifier: PushVerifier,
        codec: PayloadCodec,
        *,
        path: str,
        max_body_bytes: int,
        log: Logger,
    ) -> None:
        self._tasks = tasks
        self._verifier = verifier
        self._codec = codec
        self._path = path
        self._max_body_bytes = max_body_bytes
        self._log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"a task service speaks HTTP, not {scope['type']}")
        try:
            answer = await self._handle(scope, receive)
        except _Refused as refused:
            body = json.dumps(refused.error.to_wire(), separators=(",", ":")).encode()
            await _respond(send, refused.status, body, refused.headers)
            return
        await _respond(send, 200, answer.model_dump_json().encode(), [])

    async def _handle(self, scope: Scope, receive: Receive) -> PushedTaskAnswer:
        if _route_path(scope) != self._path:
            raise _Refused(NotFoundError("path", str(scope["path"])))
        if scope["method"] != "POST":
            refusal = InvalidRequestError(f"a task service takes POST, not {scope['method']}")
            raise _Refused(refusal, status=405, allow=b"POST")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = await self._body(headers, receive)
        try:
            self._verifier.verify(headers, body)
        except PushSignatureError as exc:
            self._log.warn("refused a push", {"reason": exc.message})
            raise _Refused(exc) from None
        try:
            pushed = PushedTask.model_validate_json(body)
        except ValidationError as exc:
            raise _Refused(PayloadValidationError.from_pydantic("not a pushed task", exc)) from None
        task = self._tasks.get(pushed.task_name)
        if task is None:
            raise _Refused(NotFoundError("task", pushed.task_name))
        return await self._attempt(task, pushed)

    async def _body(self, headers: dict[str, str], receive: Receive) -> bytes:
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self._max_body_bytes:
            raise _Refused(PayloadTooLargeError(int(declared), self._max_body_bytes))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refused(InvalidRequestError("the caller went away"))
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body_bytes:
                raise _Refused(PayloadTooLargeError(size, self._max_body_bytes))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _attempt(self, task: Task[Any, Any], pushed: PushedTask) -> PushedTaskAnswer:
        """Run one attempt; its answer: the sealed result, or the (sealed) error."""
        run_id, address, occurrence = pushed.run_id, pushed.address, pushed.occurrence
        info = TaskAttemptInfo(
            run_id=run_id,
            task_name=pushed.task_name,
            address=address,
            occurrence=occurrence,
            attempt=pushed.attempt,
            log=self._log.child(
                {"run_id": run_id, "task": pushed.task_name, "attempt": pushed.attempt}
            ),
        )
        try:
            opened = self._codec.decode(
                pushed.input, CodecContext.task(run_id, address, occurrence, "input")
            )
            payload = task.validate_input(opened)
            result = await task.run_once(payload, info, _shorter(task.timeout, pushed.timeout))
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            error = ErrorInfo.from_exception(exc)
            info.log.warn("task attempt failed", {"error": f"{error.type}: {error.message}"})
            context = CodecContext.task(run_id, address, occurrence, "error")
            return PushedTaskAnswer(status="failed", error=error.seal(self._codec, context))
        sealed_result = self._codec.encode(
            result, CodecContext.task(run_id, address, occurrence, "result")
        )
        return PushedTaskAnswer(status="completed", result=sealed_result)


def _shorter(a: timedelta | None, b: timedelta | None) -> timedelta | None:
    """The shorter of two limits, where `None` is no limit."""
    return b if a is None else a if b is None else min(a, b)


def _route_path(scope: Scope) -> str:
    """The request's path below where the app is mounted (Starlette keeps the full path)."""
    path = str(scope["path"])
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.rstrip("/") or "/"


async def _respond(
    send: Send, status: int, content: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Served alone (not mounted), the app has nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
