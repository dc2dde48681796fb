"""Workflows and their versions.

    orders = workflow("order-processing")

    @orders.v("1.0.0", timeout=timedelta(days=7))
    async def orders_v1(run: WorkflowRun, order: Order) -> str: ...

A version is an `ExecutableVersion` for workers and starts runs of itself through
any `WorkflowStarter` (the client). Its payload and result types come from the
function's annotations; both are validated with pydantic on start, on every
execution and on every replay.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, get_type_hints, overload

from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypeVar

from aiki_core import (
    CodecContext,
    CodecError,
    Concurrency,
    ErrorInfo,
    ParentClosePolicy,
    PayloadValidationError,
    RateLimit,
    RetryPolicy,
    RunInterrupt,
)
from aiki_core.wire import (
    MAX_PRIORITY,
    CompleteRun,
    ContinueRun,
    FailRun,
    ReleaseRun,
    StartRunRequest,
    SuspendRun,
)
from aiki_workflow._children import ChildRun
from aiki_workflow._hooks import Hooks, HookTask, SleepInfo
from aiki_workflow._interrupts import ContinueAsNew, PauseAtBoundary
from aiki_workflow._run import Suspended, WorkflowRun

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from pydantic import JsonValue

    from aiki_core.sdk import RunExecution, WorkflowRunHandle, WorkflowStarter
    from aiki_core.wire import ClaimedRun, RunAction

InT = TypeVar("InT")
OutT = TypeVar("OutT")
CtxT = TypeVar("CtxT", default=Any)

_Ctx = TypeVar("_Ctx")
WorkflowFunction = Callable[[WorkflowRun[_Ctx], InT], Awaitable[OutT]]
ContextFactory = Callable[["ClaimedRun"], CtxT | Awaitable[CtxT]]
"""Makes `run.ctx` for each execution of a run, from its claim; it may be async."""


class WorkflowVersion(Generic[InT, OutT]):
    """One version of a workflow: start runs of it, or let a worker execute them."""

    def __init__(
        self,
        fn: WorkflowFunction[Any, InT, OutT],
        *,
        workflow: str,
        version: str,
        retry: RetryPolicy | None,
        timeout: timedelta | None,
        task_retry: RetryPolicy | None,
        hooks: Hooks | None = None,
        strict_replay: bool = False,
        rate_limit: RateLimit[InT] | None = None,
        concurrency: Concurrency[InT] | None = None,
        priority: int = 0,
        create_context: ContextFactory[Any] | None = None,
    ) -> None:
        _check_priority(priority)
        self.fn = fn
        self.create_context = create_context
        self.rate_limit = rate_limit
        self.workflow = workflow
        self.version = version
        self.retry = retry
        self.timeout = timeout
        self.task_retry = task_retry
        self.hooks = hooks or Hooks()
        self.strict_replay = strict_replay
        self.concurrency = concurrency
        self.priority = priority
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)
        if len(params) != 2:
            raise TypeError(f"workflow {workflow!r} {version}: the function takes (run, payload)")
        self._input = TypeAdapter[InT](hints.get(params[1], Any))
        self._output = TypeAdapter[OutT](hints.get("return", Any))

    def encode_payload(self, payload: InT) -> JsonValue:
        """Validate a payload and return it as JSON values; `PayloadValidationError` if wrong."""
        value: JsonValue = self._input.dump_python(self._validate(payload), mode="json")
        return value

    def _validate(self, payload: InT) -> InT:
        try:
            return self._input.validate_python(payload)
        except ValidationError as exc:
            raise PayloadValidationError.from_pydantic(
                f"workflow {self.workflow!r} {self.version} got an invalid payload", exc
            ) from None

    def flow_control(self, payload: InT, priority: int | None) -> dict[str, Any]:
        """A start's `priority` and `concurrency` fields, the key computed from `payload`.

        `ConcurrencyKeyError` when the key function fails: nothing is sent.
        """
        if priority is not None:
            _check_priority(priority)
        spec = None if self.concurrency is None else self.concurrency.spec(self.workflow, payload)
        return {
            "priority": self.priority if priority is None else priority,
            "concurrency": spec,
        }

    def decode_result(self, value: JsonValue) -> OutT:
        """Validate a run's result against the version's return annotation."""
        try:
            return self._output.validate_python(value)
        except ValidationError as exc:
            raise PayloadValidationError.from_pydantic(
                f"workflow {self.workflow!r} {self.version} has a result of the wrong type", exc
            ) from None

    async def start(
        self,
        client: WorkflowStarter,
        payload: InT,
        *,
        reference_id: str | None = None,
        start_at: datetime | None = None,
        delay: timedelta | None = None,
        pool: str | None = None,
        timeout: timedelta | None = None,
        priority: int | None = None,
    ) -> WorkflowRunHandle[OutT]:
        """Start a run of this version (or find the one `reference_id` already started).

        A version with a `rate_limit` takes its units with the start: the run starts
        when they are granted (it is scheduled for then), so give no `start_at` or
        `delay`; a key function that fails raises `RateLimitKeyError` and starts nothing.
        `priority` (0 to 9) overrides the version's; the version's concurrency key is
        computed from `payload` here, before anything is sent.
        """
        validated = self._validate(payload)
        owner = f"workflow {self.workflow!r} version {self.version}"
        use = None if self.rate_limit is None else self.rate_limit.use(validated, owner)
        fields = {
            **self.flow_control(validated, priority),
            "workflow": self.workflow,
            "version": self.version,
            "input": self._input.dump_python(validated, mode="json"),
            "rate_limit": use,
            "reference_id": reference_id,
            "start_at": start_at,
            "delay": delay,
            "pool": pool or "default",
            "timeout": timeout if timeout is not None else self.timeout,
        }
        try:
            request = StartRunRequest.model_validate(fields)
        except ValidationError as exc:
            what = f"invalid start of workflow {self.workflow!r} {self.version}"
            raise PayloadValidationError.from_pydantic(what, exc) from None
        return await client.start_run(request, self.decode_result)

    async def start_child(
        self,
        run: WorkflowRun,
        payload: InT,
        *,
        pool: str | None = None,
        timeout: timedelta | None = None,
        priority: int | None = None,
        parent_close_policy: ParentClosePolicy = ParentClosePolicy.TERMINATE,
    ) -> ChildRun[OutT]:
        """Start a run of this version as a child of `run` (once, even across replays).

        The child runs in the parent's pool unless `pool` is given. When the parent
        ends, however it ends, the server applies `parent_close_policy`: `TERMINATE`
        cancels the child at once, `REQUEST_CANCEL` cancels it as a client would,
        `ABANDON` lets it run on. `await child.result()` waits for it durably.
        `priority` overrides the version's; its concurrency key is computed from `payload`.
        """
        run_id, address, occurrence = await run.start_child(
            self.workflow,
            self.version,
            self.encode_payload(payload),
            pool=pool,
            timeout=timeout if timeout is not None else self.timeout,
            parent_close_policy=parent_close_policy,
            **self.flow_control(payload, priority),
        )
        return ChildRun(run, run_id, address, occurrence, self.decode_result)

    async def execute(self, execution: RunExecution) -> RunAction:
        """Replay and continue a claimed run; what to do with it next."""
        action = await self._execute(execution)
        if isinstance(action, FailRun):  # the error leaves the process sealed
            context = CodecContext.run(execution.claim.run.id, "error")
            return action.model_copy(update={"error": action.error.seal(execution.codec, context)})
        return action

    async def _execute(self, execution: RunExecution) -> RunAction:
        claimed = execution.claim.run
        run_id = claimed.id
        try:
            run = WorkflowRun(
                execution,
                task_retry=self.task_retry,
                on_sleep=self.hooks.on_sleep,
                strict_replay=self.strict_replay,
                encode_payload=self.encode_payload,
            )
            raw = execution.codec.decode(
                execution.claim.input, CodecContext.run_input(run_id, claimed.schedule_id)
            )
            payload = self._input.validate_python(raw)
        except CodecError as exc:  # the input cannot be read: no attempt can succeed
            return FailRun(error=ErrorInfo.from_exception(exc))
        except ValidationError as exc:
            error = PayloadValidationError.from_pydantic(
                f"run {run_id} has an input that {self.workflow!r} {self.version} rejects", exc
            )
            return FailRun(error=ErrorInfo.from_exception(error))
        factory = self.create_context or execution.create_context
        if factory is not None:
            try:
                context = factory(execution.claim)
                run.ctx = await context if inspect.isawaitable(context) else context
            except Exception as exc:  # this attempt fails; the version's retry applies
                own = "the version's" if self.create_context is not None else "the worker's"
                return self._failure(run, exc, during=f"{own} create_context")
        try:
            outcome = await run.drive(self._body(run, payload))
        except ContinueAsNew as cont:
            return ContinueRun(run_id=cont.run_id, input=cont.sealed_input)
        except PauseAtBoundary:  # what it did is on record; the server pauses it on release
            execution.log.info("run paused at a task boundary; releasing it")
            return ReleaseRun()
        except RunInterrupt:
            raise
        except Exception as exc:  # a failing hook
            return self._failure(run, exc)
        if isinstance(outcome, Suspended):
            return SuspendRun(waits=outcome.waits)
        return outcome

    async def _body(self, run: WorkflowRun, payload: InT) -> CompleteRun | FailRun:
        """The hooks around the workflow's function; how the run (or this attempt) ends.

        In a cleanup the run ends with the cleanup's error, whatever the function (or a
        `before` task, where the run may have been) did.
        """
        try:
            await self.hooks.run_before(run, payload)
        except Exception:
            if run.cleanup is None:
                raise  # a failing `before` fails the attempt without hooks
            return await self._clean_up(run, payload)
        try:
            result = await self.fn(run, payload)
            try:
                validated = self._output.validate_python(result)
            except ValidationError as exc:
                raise PayloadValidationError.from_pydantic(
                    f"run {run.id} returned a result of the wrong type", exc
                ) from None
        except Exception as exc:
            if run.cleanup is not None:
                return await self._clean_up(run, payload)
            failure = self._failure(run, exc)
            if not failure.retries:  # the run ends: a retried attempt has not
                await self.hooks.run_failed(run, payload, failure.error)
            return failure
        if run.cleanup is not None:
            return await self._clean_up(run, payload)
        await self.hooks.run_completed(run, payload, validated)
        encoded = run.codec.encode(
            self._output.dump_python(validated, mode="json"), CodecContext.run(run.id, "result")
        )
        return CompleteRun(result=encoded)

    async def _clean_up(self, run: WorkflowRun, payload: InT) -> FailRun:
        """The run's code is over in its cleanup: its hooks run, and it ends with its error."""
        assert run.cleanup is not None
        run._code_over()
        await self.hooks.run_cleanup(run, payload, run.cleanup)
        return FailRun(error=run.cleanup)

    def _failure(self, run: WorkflowRun, exc: Exception, *, during: str | None = None) -> FailRun:
        """The attempt fails with `exc` (raised in `during`, when not in the workflow)."""
        error = ErrorInfo.from_exception(exc)
        if during is not None:
            error = error.model_copy(update={"message": f"{during} failed: {error.message}"})
        delay = None
        if self.retry is not None and error.retryable:
            delay = self.retry.delay_after(run.attempt)
        run.log.error("run failed", {"error": f"{error.type}: {error.message}"})
        # the server counts the delay on its clock: this process's may be off
        return FailRun(error=error, retry_delay=delay)

    def __repr__(self) -> str:
        return f"<WorkflowVersion {self.workflow!r} {self.version}>"


class Workflow:
    """A named workflow; its versions are declared with `@workflow.v("1.0.0")`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.versions: dict[str, WorkflowVersion[Any, Any]] = {}

    @overload
    def v(
        self,
        version: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        task_retry: RetryPolicy | None = None,
        before: Sequence[HookTask[Any]] = (),
        after: Sequence[HookTask[Any]] = (),
        on_complete: HookTask[Any] | None = None,
        on_error: HookTask[ErrorInfo] | None = None,
        on_sleep: HookTask[SleepInfo] | None = None,
        on_cancel: HookTask[ErrorInfo] | None = None,
        strict_replay: bool = False,
        rate_limit: RateLimit[Any] | None = None,
        concurrency: Concurrency[Any] | None = None,
        priority: int = 0,
        create_context: Callable[[ClaimedRun], Awaitable[CtxT]],
    ) -> Callable[[WorkflowFunction[CtxT, InT, OutT]], WorkflowVersion[InT, OutT]]: ...

    @overload
    def v(
        self,
        version: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        task_retry: RetryPolicy | None = None,
        before: Sequence[HookTask[Any]] = (),
        after: Sequence[HookTask[Any]] = (),
        on_complete: HookTask[Any] | None = None,
        on_error: HookTask[ErrorInfo] | None = None,
        on_sleep: HookTask[SleepInfo] | None = None,
        on_cancel: HookTask[ErrorInfo] | None = None,
        strict_replay: bool = False,
        rate_limit: RateLimit[Any] | None = None,
        concurrency: Concurrency[Any] | None = None,
        priority: int = 0,
        create_context: Callable[[ClaimedRun], CtxT] | None = None,
    ) -> Callable[[WorkflowFunction[CtxT, InT, OutT]], WorkflowVersion[InT, OutT]]: ...

    def v(
        self,
        version: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        task_retry: RetryPolicy | None = None,
        before: Sequence[HookTask[Any]] = (),
        after: Sequence[HookTask[Any]] = (),
        on_complete: HookTask[Any] | None = None,
        on_error: HookTask[ErrorInfo] | None = None,
        on_sleep: HookTask[SleepInfo] | None = None,
        on_cancel: HookTask[ErrorInfo] | None = None,
        strict_replay: bool = False,
        rate_limit: RateLimit[Any] | None = None,
        concurrency: Concurrency[Any] | None = None,
        priority: int = 0,
        create_context: ContextFactory[CtxT] | None = None,
    ) -> Callable[[WorkflowFunction[CtxT, InT, OutT]], WorkflowVersion[InT, OutT]]:
        """Declare `version`: `retry` retries the whole run, `timeout` bounds it.

        `task_retry` is the policy of tasks that declare none (default: no retries).
        `before`, `after`, `on_complete`, `on_error`, `on_sleep` and `on_cancel` are
        lifecycle tasks, run durably (see `aiki_workflow._hooks`); a run cancelled or
        timed out after it ran runs `on_cancel` (or `on_error`) and `after` in its
        cleanup. With `strict_replay`, a replay
        that calls a task not on record while recorded calls are still unused fails
        the run with `ReplayDivergenceError` instead of running it. `rate_limit`
        takes units from a server rate limit with each start of a run (`start`; not
        with a child's): the run starts when they are granted.

        `concurrency` limits how many runs of the workflow (per key) execute at once,
        and `priority` (0 to 9, higher first) is the default of its runs' starts; see
        the flow control guide.

        `create_context` makes `run.ctx` for each execution of a run, from its claim
        (it may be async), instead of the worker's; the function's
        `run: WorkflowRun[Ctx]` is typed by it. A factory that raises fails the
        attempt (the version's `retry` applies), its error saying so.
        """
        _check_priority(priority)
        hooks = Hooks(before, after, on_complete, on_error, on_sleep, on_cancel)

        def declare(fn: WorkflowFunction[CtxT, InT, OutT]) -> WorkflowVersion[InT, OutT]:
            if version in self.versions:
                raise ValueError(f"workflow {self.name!r} already has version {version!r}")
            declared = WorkflowVersion(
                fn,
                workflow=self.name,
                version=version,
                retry=retry,
                timeout=timeout,
                task_retry=task_retry,
                hooks=hooks,
                strict_replay=strict_replay,
                rate_limit=rate_limit,
                concurrency=concurrency,
                priority=priority,
                create_context=create_context,
            )
            self.versions[version] = declared
            return declared

        return declare

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}>"


def _check_priority(priority: int) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be an int from 0 to {MAX_PRIORITY}, got {priority!r}")
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be 0 to {MAX_PRIORITY}, got {priority}")


def workflow(name: str) -> Workflow:
    """A workflow called `name`; declare its versions with `.v(...)`."""
    return Workflow(name)
