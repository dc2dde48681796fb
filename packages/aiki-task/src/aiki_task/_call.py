"""What a local task and a remote one share: typed payloads, and a call handed to the run.

A call validates its payload against the input type, hands the run a `TaskInvocation`
(the run replays it from the record, or runs its attempts under the retry policy), and
validates the result against the output type, fresh or recorded. Only what one attempt
does differs: a `Task` runs its function here, a `RemoteTask` has the run push the
attempt to the task endpoint that serves it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from pydantic import TypeAdapter, ValidationError

from aiki_core import PayloadValidationError

if TYPE_CHECKING:
    from datetime import timedelta

    from pydantic import JsonValue

    from aiki_core import RateLimit, RetryPolicy
    from aiki_core.sdk import TaskAttemptInfo, TaskRunContext
    from aiki_core.wire import RateLimitUse

InT = TypeVar("InT")
OutT = TypeVar("OutT")


@dataclass(frozen=True, slots=True)
class _Call(Generic[InT, OutT]):
    """One call of a task with its validated input: a `TaskInvocation` for the engine."""

    task: TypedTask[InT, OutT]
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


class TypedTask(ABC, Generic[InT, OutT]):
    """A named task with typed input and output, called with `await t.start(run, payload)`."""

    def __init__(
        self,
        name: str,
        *,
        input: TypeAdapter[InT],
        output: TypeAdapter[OutT],
        retry: RetryPolicy | None,
        timeout: timedelta | None,
        rate_limit: RateLimit[InT] | None,
    ) -> None:
        self.name = name
        self.retry = retry
        self.timeout = timeout
        self.rate_limit = rate_limit
        self._input = input
        self._output = output

    async def start(self, run: TaskRunContext, payload: InT) -> OutT:
        """Run the task in `run`: its recorded result on replay, else run and record it."""
        validated = self.validate_input(payload)
        call = _Call(self, validated, self._input.dump_python(validated, mode="json"))
        result = await run.execute_task(call)
        return self.decode_result(result)

    def validate_input(self, payload: Any) -> InT:
        """Validate a payload (or its JSON values) against the task's input type."""
        try:
            return self._input.validate_python(payload)
        except ValidationError as exc:
            what = f"task {self.name!r} got an invalid payload"
            raise PayloadValidationError.from_pydantic(what, exc) from None

    def decode_result(self, value: JsonValue) -> OutT:
        """Validate a result (fresh or recorded) against the task's output type."""
        try:
            return self._output.validate_python(value)
        except ValidationError as exc:
            what = f"task {self.name!r} has a result of the wrong type"
            raise PayloadValidationError.from_pydantic(what, exc) from None

    def _checked_result(self, value: Any) -> JsonValue:
        """An attempt's result checked against the output type, as JSON values.

        What is recorded: a result of the wrong type fails its attempt instead.
        """
        return cast("JsonValue", self._output.dump_python(self.decode_result(value), mode="json"))

    @abstractmethod
    async def _run_attempt(self, payload: InT, info: TaskAttemptInfo) -> JsonValue:
        """Run one attempt; its validated result as JSON values."""
