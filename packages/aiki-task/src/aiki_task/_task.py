"""The `@task` decorator and the `Task` it makes.

A task is a function with one payload parameter (and optionally a `TaskContext`),
async or plain; a plain one runs in a worker thread. Its payload and result are
validated with pydantic against its annotations: the payload before the function
runs, the result when it returns, and a recorded result again when a replay reads it.
"""

from __future__ import annotations

import inspect
import threading
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints, overload

import anyio
import anyio.to_thread
from pydantic import TypeAdapter

from aiki_core import RateLimit, RetryPolicy, TaskTimeoutError
from aiki_core.wire import to_millis
from aiki_task._call import TypedTask
from aiki_task._context import TaskContext
from aiki_task._remote import RemoteTask

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import timedelta

    from pydantic import JsonValue

    from aiki_core.sdk import TaskAttemptInfo

InT = TypeVar("InT")
OutT = TypeVar("OutT")

_UNSET: Any = object()


class Task(TypedTask[InT, OutT]):
    """A durable step of a workflow: call it with `await my_task.start(run, payload)`."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        retry: RetryPolicy | None,
        timeout: timedelta | None,
        rate_limit: RateLimit[InT] | None = None,
    ) -> None:
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters.values())
        if not params or len(params) > 2:
            raise TypeError(
                f"task {name!r}: the function takes a payload and optionally a TaskContext"
            )
        super().__init__(
            name,
            input=TypeAdapter[InT](hints.get(params[0].name, Any)),
            output=TypeAdapter[OutT](hints.get("return", Any)),
            retry=retry,
            timeout=timeout,
            rate_limit=rate_limit,
        )
        self.fn = fn
        self._takes_context = len(params) == 2
        self._is_async = inspect.iscoroutinefunction(fn)

    def with_options(
        self,
        *,
        retry: RetryPolicy | None = _UNSET,
        timeout: timedelta | None = _UNSET,
        rate_limit: RateLimit[InT] | None = _UNSET,
    ) -> Task[InT, OutT]:
        """A copy of this task with another retry policy, timeout or rate limit."""
        return Task(
            self.fn,
            name=self.name,
            retry=self.retry if retry is _UNSET else retry,
            timeout=self.timeout if timeout is _UNSET else timeout,
            rate_limit=self.rate_limit if rate_limit is _UNSET else rate_limit,
        )

    def remote(self) -> RemoteTask[InT, OutT]:
        """This task as served by a task endpoint: each attempt runs there, not here.

        Same name, types, retry policy, timeout and rate limit; the workflow replays,
        retries and records it exactly like the local task.
        """
        return RemoteTask(
            self.name,
            input=self._input,
            output=self._output,
            retry=self.retry,
            timeout=self.timeout,
            rate_limit=self.rate_limit,
        )

    async def _run_attempt(self, payload: InT, info: TaskAttemptInfo) -> JsonValue:
        return await self.run_once(payload, info, self.timeout)

    async def run_once(
        self, payload: InT, info: TaskAttemptInfo, timeout: timedelta | None
    ) -> JsonValue:
        """Run the function once on a validated payload, cancelled after `timeout`.

        Its validated result as JSON values; `TaskTimeoutError` when it ran over.
        """
        # a thread's attempt always has one: it carries the cancellation to the thread
        context = None
        if self._takes_context or not self._is_async:
            context = TaskContext.from_attempt(info)
        args: tuple[Any, ...] = (payload, context) if self._takes_context else (payload,)
        limit = None if timeout is None else timeout.total_seconds()
        result: Any = None
        with anyio.move_on_after(limit) as scope:
            if self._is_async:
                result = await self.fn(*args)
            else:
                assert context is not None
                result = await _in_thread(partial(self.fn, *args), context, info)
        if scope.cancelled_caught:
            assert timeout is not None
            raise TaskTimeoutError(info.run_id, self.name, info.attempt, to_millis(timeout))
        return self._checked_result(result)

    def __repr__(self) -> str:
        return f"<Task {self.name!r}>"


async def _in_thread(fn: Callable[[], Any], context: TaskContext, info: TaskAttemptInfo) -> Any:
    """`fn()` in a worker thread, which cannot be interrupted.

    Cancelled, the attempt sets `context.cancelled` and leaves the thread to finish
    alone; the engine watches it (`info.abandoned`).
    """
    done = threading.Event()

    def call() -> Any:
        try:
            return fn()
        finally:
            done.set()

    try:
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        context._cancel.set()
        if info.abandoned is not None and not done.is_set():
            info.abandoned(lambda: not done.is_set())
        raise


class _TaskDecorator:
    def __init__(
        self,
        name: str,
        retry: RetryPolicy | None,
        timeout: timedelta | None,
        rate_limit: RateLimit[Any] | None,
    ) -> None:
        self._name = name
        self._retry = retry
        self._timeout = timeout
        self._rate_limit = rate_limit

    @overload
    def __call__(self, fn: Callable[[InT, TaskContext], Awaitable[OutT]]) -> Task[InT, OutT]: ...
    @overload
    def __call__(self, fn: Callable[[InT], Awaitable[OutT]]) -> Task[InT, OutT]: ...
    @overload
    def __call__(self, fn: Callable[[InT, TaskContext], OutT]) -> Task[InT, OutT]: ...
    @overload
    def __call__(self, fn: Callable[[InT], OutT]) -> Task[InT, OutT]: ...
    def __call__(self, fn: Callable[..., Any]) -> Task[Any, Any]:
        return Task(
            fn,
            name=self._name,
            retry=self._retry,
            timeout=self._timeout,
            rate_limit=self._rate_limit,
        )


def task(
    name: str,
    *,
    retry: RetryPolicy | None = None,
    timeout: timedelta | None = None,
    rate_limit: RateLimit[Any] | None = None,
) -> _TaskDecorator:
    """Make a function a durable task called `name`.

        @task("charge-card", retry=RetryPolicy.exponential(max_attempts=5,
              base_delay=timedelta(seconds=1)), timeout=timedelta(seconds=30))
        async def charge_card(order: Order, ctx: TaskContext) -> str: ...

    `retry` defaults to the run's policy; `timeout` bounds each attempt, which is
    cancelled when it runs over and counts as a failed attempt. `rate_limit` takes
    units from a server rate limit before each attempt (not on replay): a short wait
    for them is waited out in process, a long one suspends the run; a wait is no
    attempt. Its `key` gets the validated payload.
    """
    return _TaskDecorator(name, retry, timeout, rate_limit)
