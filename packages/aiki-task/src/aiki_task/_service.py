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
tell "the task failed" from "the endpoint is failing". Steps 1 and 2, and the
answers to what they refuse, are those of `aiki_core.push.SignedPushApp`, the base
of every endpoint the server pushes to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from aiki_core import CodecContext, ConsoleLogger, ErrorInfo, IdentityCodec, NotFoundError
from aiki_core.push import PushRefused, SignedPushApp
from aiki_core.sdk import TaskAttemptInfo
from aiki_core.wire import PushedTask, PushedTaskAnswer

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import timedelta

    from aiki_core import Logger, PayloadCodec
    from aiki_core.push import PushSecret
    from aiki_task._task import Task

__all__ = ["asgi_app"]

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
) -> SignedPushApp:
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
        secrets,
        codec or IdentityCodec(),
        path=path,
        max_body_bytes=max_body_bytes,
        log=log or ConsoleLogger(),
    )


class _TaskService(SignedPushApp):
    def __init__(
        self,
        tasks: dict[str, Task[Any, Any]],
        secrets: Iterable[str | PushSecret],
        codec: PayloadCodec,
        *,
        path: str,
        max_body_bytes: int,
        log: Logger,
    ) -> None:
        super().__init__(secrets, path=path, max_body_bytes=max_body_bytes)
        self._tasks = tasks
        self._codec = codec
        self._log = log

    def request_log(self) -> Logger:
        return self._log

    async def handle(self, body: bytes, delivery_id: str, log: Logger) -> PushedTaskAnswer:
        pushed = self.parse(PushedTask, body, "not a pushed task")
        task = self._tasks.get(pushed.task_name)
        if task is None:
            raise PushRefused(NotFoundError("task", pushed.task_name))
        return await self._attempt(task, pushed)

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
