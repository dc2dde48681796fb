"""`RemoteTask`: a task a workflow calls while a task endpoint serves it.

The run treats the call like a local task's: replayed from its record, its attempts
retried under its retry policy and recorded, a long back-off suspending the run. Only
an attempt differs: the run asks the server to push it to the task endpoint whose
`serves` lists the task (`aiki_task.asgi_app` behind it), and waits for the answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import anyio
from pydantic import TypeAdapter

from aiki_core import NonRetryableError, TaskTimeoutError
from aiki_core.wire import to_millis
from aiki_task._call import TypedTask

if TYPE_CHECKING:
    from datetime import timedelta

    from pydantic import JsonValue

    from aiki_core import RateLimit, RetryPolicy
    from aiki_core.sdk import TaskAttemptInfo

ANSWER_MARGIN = 20.0
"""Seconds past a remote attempt's timeout the run waits for the server's answer: the
server may wait 10 s for a busy endpoint's push slot, then gives the endpoint 5 s
past the timeout before it answers itself."""

InT = TypeVar("InT")
OutT = TypeVar("OutT")


class RemoteTask(TypedTask[InT, OutT]):
    """A task run by a task endpoint: `await remote.start(run, payload)` in a workflow.

    Made by `my_task.remote()` where the workflow's code has the task's definition,
    or by `remote_task(name, input=..., output=...)` where it has only its types.
    """

    async def _run_attempt(self, payload: InT, info: TaskAttemptInfo) -> JsonValue:
        if info.call_remote is None:
            raise NonRetryableError(
                f"task {self.name!r} is remote: only a workflow run can call it"
            )
        # the server answers within the timeout and its margin; one that does not answer
        # (gone, or its answer lost) does not hold the attempt past that
        limit = None if self.timeout is None else self.timeout.total_seconds() + ANSWER_MARGIN
        with anyio.move_on_after(limit) as scope:
            result = await info.call_remote()
        if scope.cancelled_caught:
            assert self.timeout is not None
            raise TaskTimeoutError(info.run_id, self.name, info.attempt, to_millis(self.timeout))
        return self._checked_result(result)

    def __repr__(self) -> str:
        return f"<RemoteTask {self.name!r}>"


def remote_task(
    name: str,
    *,
    input: type[InT],
    output: type[OutT],
    retry: RetryPolicy | None = None,
    timeout: timedelta | None = None,
    rate_limit: RateLimit[InT] | None = None,
) -> RemoteTask[InT, OutT]:
    """A task served by a task endpoint, known here only by its name and types.

        resize = remote_task("resize-image", input=Image, output=Thumb,
                             retry=RetryPolicy.exponential(max_attempts=3),
                             timeout=timedelta(seconds=20))
        thumb = await resize.start(run, image)  # inside a workflow

    The payload is validated against `input` before the call, the result against
    `output` when it comes back and again when a replay reads it. `retry`, `timeout`
    and `rate_limit` mean what they mean for `@task`; `timeout` also bounds the
    attempt on the endpoint (with the endpoint's own timeout of the task, the shorter).
    """
    return RemoteTask(
        name,
        input=TypeAdapter(input),
        output=TypeAdapter(output),
        retry=retry,
        timeout=timeout,
        rate_limit=rate_limit,
    )
