"""The `@task` decorator and the `Task` it makes.

A task is a function with one payload parameter (and optionally a `TaskContext`),
async or plain; a plain one runs in a worker thread. Its payload and result are
validated with pydantic against its annotations: the payload before the function
runs, the result when it returns, and a recorded result again when a replay reads it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, get_type_hints, overload

import anyio
import anyio.to_thread
from pydantic import TypeAdapter, ValidationError

from aiki_core import PayloadValidationError, RateLimit, RetryPolicy, TaskTimeoutError
from aiki_core.wire import to_millis
from aiki_task._context import TaskContext

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import timedelta

    from pydantic import JsonValue

    from aiki_core.sdk import TaskAttemptInfo, TaskRunContext
    from aiki_core.wire import RateLimitUse

InT = TypeVar("InT")
OutT = TypeVar("OutT")

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class _Call(Generic[InT, OutT]):
    """One call of a task with its validated input: a `TaskInvocation` for the engine."""

    task: Task[InT, OutT]
    payload: InT
    input: JsonValue

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def retry(self) -> RetryPolicy | None:
        return self.task.retry

    @property
    def timeout(self) -> timedelta | None:
        return self.task.timeout

    def rate_limit(self) -> RateLimitUse | None:
        declared = self.task.rate_limit
        return None if declared is None else declared.use(self.payload, f"task {self.name!r}")

    async def run_attempt(self, attempt: TaskAttemptInfo) -> JsonValue:
        return await self.task._run_attempt(self.payload, attempt)


class Task(Generic[InT, OutT]):
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
        self.fn = fn
        self.name = name
        self.retry = retry
        self.timeout = timeout
        self.rate_limit = rate_limit
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters.values())
        if not params or len(params) > 2:
            raise TypeError(
                f"task {name!r}: the function takes a payload and optionally a TaskContext"
            )
        self._takes_context = len(params) == 2
        self._is_async = inspect.iscoroutinefunction(fn)
        self._input = TypeAdapter[InT](hints.get(params[0].name, Any))
        self._output = TypeAdapter[OutT](hints.get("return", Any))

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

    async def start(self, run: TaskRunContext, payload: InT) -> OutT:
        """Run the task in `run`: its recorded result on replay, else run and record it."""
        try:
            validated = self._input.validate_python(payload)
        except ValidationError as exc:
            what = f"task {self.name!r} got an invalid payload"
            raise PayloadValidationError.from_pydantic(what, exc) from None
        call = _Call(self, validated, self._input.dump_python(validated, mode="json"))
        result = await run.execute_task(call)
        return self.decode_result(result)

    def decode_result(self, value: JsonValue) -> OutT:
        """Validate a result (fresh or recorded) against the task's return annotation."""
        try:
            return self._output.validate_python(value)
        except ValidationError as exc:
            what = f"task {self.name!r} has a result of the wrong type"
            raise PayloadValidationError.from_pydantic(what, exc) from None

    async def _run_attempt(self, payload: InT, info: TaskAttemptInfo) -> JsonValue:
        args: tuple[Any, ...] = (payload,)
        if self._takes_context:
            args = (payload, TaskContext.from_attempt(info))
        limit = None if self.timeout is None else self.timeout.total_seconds()
        result: Any = None
        with anyio.move_on_after(limit) as scope:
            if self._is_async:
                result = await self.fn(*args)
            else:
                # a thread cannot be interrupted: on timeout it is left to finish alone
                result = await anyio.to_thread.run_sync(
                    partial(self.fn, *args), abandon_on_cancel=True
                )
        if scope.cancelled_caught:
            assert self.timeout is not None
            raise TaskTimeoutError(info.run_id, self.name, info.attempt, to_millis(self.timeout))
        validated = self.decode_result(result)
        return cast("JsonValue", self._output.dump_python(validated, mode="json"))

    def __repr__(self) -> str:
        return f"<Task {self.name!r}>"


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
