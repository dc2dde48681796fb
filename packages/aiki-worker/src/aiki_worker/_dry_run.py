"""`dry_run`: replay a run's records on another version's code, running nothing.

The version executes as on a worker, against the run's detail as a claim, but every
write is refused: the first task call with no record stops the replay before its
attempt starts (an interceptor around `execute_task`), and so does any other write (a
child to start, a webhook to mint). Recorded results are noted as the replay decodes
them, through a codec that passes them through: what was noted is what the new code
reused, the rest of the records it did not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import anyio

from aiki_core import (
    CodecContext,
    ConsoleLogger,
    IdentityCodec,
    Interceptor,
    LogLevel,
    RunInterrupt,
    TaskStatus,
)
from aiki_core.wire import (
    TASK_TERMINAL_STATUSES,
    ClaimedRun,
    CompleteRun,
    DryRunOutcome,
    DryRunReport,
    FailRun,
    RecordedCall,
    RunSummary,
    SuspendRun,
)
from aiki_worker._execution import Execution

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pydantic import JsonValue

    from aiki_core import Logger, TaskExecutionInfo
    from aiki_core.sdk import ExecutableVersion
    from aiki_core.wire import RunDetail, TaskRecord


class _Stop(RunInterrupt):
    """The replay reached what it may not do: `what`, and the task call, if one."""

    def __init__(self, what: str, call: RecordedCall | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.call = call


class _ReplayOnly(Interceptor):
    """Stops the replay where a task attempt would start."""

    async def execute_task(
        self, info: TaskExecutionInfo, proceed: Callable[[], Awaitable[JsonValue]]
    ) -> JsonValue:
        attempt = info.attempt
        call = RecordedCall(
            name=attempt.task_name, address=attempt.address, occurrence=attempt.occurrence
        )
        raise _Stop(f"task {attempt.task_name!r} has no record: it would run", call)


class _NotingCodec(IdentityCodec):
    """Passes payloads through; notes each recorded task outcome the replay opens."""

    def __init__(self, run_id: str) -> None:
        self.opened: set[str] = set()
        self._prefix = f"{run_id}\x00task:"

    def decode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        key = f"{context.run_id}\x00{context.field}"
        if key.startswith(self._prefix) and key.endswith((":result", ":error")):
            self.opened.add(context.field.rsplit(":", 1)[0])  # task:<address>:<occurrence>
        return value


class _NoWrites:
    """A `WorkerApi` that writes nothing: each call stops the replay."""

    def __init__(self, codec: _NotingCodec, log: Logger) -> None:
        self.codec = codec
        self.log = log

    def _refuse(self, what: str) -> NoReturn:
        raise _Stop(f"the run would {what}")

    async def claim(self, *_: object) -> NoReturn:
        self._refuse("claim")

    async def heartbeat(self, *_: object) -> NoReturn:
        self._refuse("heartbeat")

    async def directives(self, *_: object) -> NoReturn:
        self._refuse("ask for directives")

    async def report_abandoned_task(self, *_: object) -> NoReturn:
        self._refuse("report an abandoned task")

    async def record_task(self, *_: object) -> NoReturn:
        self._refuse("record a task attempt")

    async def start_child(self, *_: object) -> NoReturn:
        self._refuse("start a child run")

    async def transition(self, *_: object) -> NoReturn:
        self._refuse("report itself")

    async def create_webhook(self, *_: object) -> NoReturn:
        self._refuse("mint a webhook")

    async def acquire_rate_limit(self, *_: object) -> NoReturn:
        self._refuse("take rate limit units")

    async def call_remote_task(self, *_: object) -> NoReturn:
        self._refuse("push a task to its endpoint")


async def dry_run(
    version: ExecutableVersion, run: RunDetail, *, log: Logger | None = None
) -> DryRunReport:
    """Replay `run` on `version` without running or writing anything; what it would reuse.

    `run` is the run's detail as a client reads it (`await handle.detail()`, its
    payloads opened). The report lists the recorded task calls the replay reused, the
    first call it would run (the replay stops there: past it, the code needs a result
    that does not exist), and the recorded calls it did not reuse up to that point.
    """
    codec = _NotingCodec(run.id)
    logger = log or ConsoleLogger(LogLevel.ERROR)
    summary = RunSummary.model_validate(run.model_dump()).model_copy(
        update={"version": version.version}
    )
    claim = ClaimedRun(
        run=summary,
        input=run.input,
        tasks=[_opened_through_codec(t) for t in run.tasks],
        sleeps=run.sleeps,
        event_waits=run.event_waits,
        events=run.events,
        children=run.children,
    )
    outcome: DryRunOutcome
    call = None
    async with anyio.create_task_group() as spawned:
        execution = Execution(
            _NoWrites(codec, logger),
            claim,
            logger.child({"run_id": run.id, "dry_run": True}),
            None,
            spawned.start_soon,
            interceptors=(_ReplayOnly(),),
        )
        try:
            action = await version.execute(execution)
        except BaseException as exc:
            stop = _stop_in(exc)
            if stop is None:
                raise
            call = stop.call
            outcome, said = ("runs_a_task" if call else "writes"), stop.what
        else:
            outcome, said = _ended(action)
    recorded = [t for t in run.tasks if t.status in TASK_TERMINAL_STATUSES]
    reused = [_call(t) for t in recorded if _key(t) in codec.opened]
    return DryRunReport(
        run_id=run.id,
        version=version.version,
        outcome=outcome,
        reused=reused,
        would_run=call,
        not_reused=[_call(t) for t in recorded if _key(t) not in codec.opened],
        stopped_at=said,
    )


def _stop_in(exc: BaseException) -> _Stop | None:
    """The stop `exc` is, or the first one in it (a group of the run's branches)."""
    if isinstance(exc, _Stop):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _stop_in(inner)) is not None:
                return found
    return None


def _ended(action: object) -> tuple[DryRunOutcome, str]:
    if isinstance(action, CompleteRun):
        return "completes", "the run would complete: every call it makes is on record"
    if isinstance(action, FailRun):
        return "fails", f"the run would fail: {action.error.message}"
    if isinstance(action, SuspendRun):
        waits = ", ".join(w.kind for w in action.waits)
        return "waits", f"the run would wait ({waits}), every call before on record"
    return "writes", f"the run would report {type(action).__name__}"


def _opened_through_codec(record: TaskRecord) -> TaskRecord:
    """A failed record whose error is in clear, as if sealed: its replay opens it (noted)."""
    error = record.error
    if record.status is not TaskStatus.FAILED or error is None or error.sealed is not None:
        return record
    as_sealed = error.model_copy(update={"sealed": error.model_dump(mode="json")})
    return record.model_copy(update={"error": as_sealed})


def _key(record: TaskRecord) -> str:
    return f"task:{record.address}:{record.occurrence}"


def _call(record: TaskRecord) -> RecordedCall:
    return RecordedCall(name=record.name, address=record.address, occurrence=record.occurrence)
