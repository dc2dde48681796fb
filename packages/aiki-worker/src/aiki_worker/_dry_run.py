"""`dry_run`: replay a run's records on another version's code, running nothing.

The version executes as on a worker, against the run's detail as a claim, but every
write is refused: the first task call with no record stops the replay before its
attempt starts (an interceptor around `execute_task`), and so does any other write (a
child to start, a webhook to mint). Recorded results are noted as the replay decodes
them, through a codec that wraps the real one (the identity for a detail already
opened; the worker's own for a claim, so sealed payloads open as on a claim): what
was noted is what the new code reused, the rest of the records it did not.

Two ways in, one replay (`replay_dry`): `dry_run(version, detail)` in the caller's
process, and `DryRunJobs`, which replays the jobs a dry-run migration hands a worker
through its directives poll and reports each to the server.
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
    PayloadTooLargeError,
    RunInterrupt,
    TaskStatus,
)
from aiki_core.wire import (
    MAX_DRY_RUN_WAIT,
    MAX_DRY_RUNS_PER_POLL,
    TASK_TERMINAL_STATUSES,
    ClaimedRun,
    CompleteRun,
    DryRunAnswer,
    DryRunOutcome,
    DryRunReport,
    FailRun,
    RecordedCall,
    RunSummary,
    SuspendRun,
)
from aiki_worker._execution import Execution

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from pydantic import JsonValue

    from aiki_core import Logger, PayloadCodec, TaskExecutionInfo
    from aiki_core.sdk import ExecutableVersion, WorkerApi
    from aiki_core.wire import DryRunJob, RunDetail, TaskRecord


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


class _NotingCodec:
    """Wraps a codec; notes each recorded task outcome the replay opens through it."""

    def __init__(self, run_id: str, inner: PayloadCodec) -> None:
        self.opened: set[str] = set()
        self._run_id = run_id
        self._inner = inner
        self._in_clear: set[str] = set()
        """Fields of failed records whose error is in clear, handed to the replay as if
        sealed (so that it opens them here): they pass through as they are."""

    def address_key(self, run_input: JsonValue) -> bytes | None:
        return self._inner.address_key(run_input)

    def encode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        return self._inner.encode(value, context)

    def decode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        field = context.field
        if context.run_id == self._run_id:
            if field.startswith("task:") and field.endswith((":result", ":error")):
                self.opened.add(field.rsplit(":", 1)[0])  # task:<address>:<occurrence>
            if field in self._in_clear:
                return value
        return self._inner.decode(value, context)

    def opened_through(self, record: TaskRecord) -> TaskRecord:
        """A failed record whose error is in clear, as if sealed: its replay opens it (noted)."""
        error = record.error
        if record.status is not TaskStatus.FAILED or error is None or error.sealed is not None:
            return record
        self._in_clear.add(f"{_key(record)}:error")
        as_sealed = error.model_copy(update={"sealed": error.model_dump(mode="json")})
        return record.model_copy(update={"error": as_sealed})


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

    async def report_dry_run(self, *_: object) -> NoReturn:
        self._refuse("report a dry run")


async def dry_run(
    version: ExecutableVersion, run: RunDetail, *, log: Logger | None = None
) -> DryRunReport:
    """Replay `run` on `version` without running or writing anything; what it would reuse.

    `run` is the run's detail as a client reads it (`await handle.detail()`, its
    payloads opened). The report lists the recorded task calls the replay reused, the
    first call it would run (the replay stops there: past it, the code needs a result
    that does not exist), and the recorded calls it did not reuse up to that point.
    """
    summary = RunSummary.model_validate(run.model_dump()).model_copy(
        update={"version": version.version}
    )
    claim = ClaimedRun(
        run=summary,
        input=run.input,
        tasks=run.tasks,
        sleeps=run.sleeps,
        event_waits=run.event_waits,
        events=run.events,
        children=run.children,
    )
    return await replay_dry(version, claim, IdentityCodec(), log or ConsoleLogger(LogLevel.ERROR))


async def replay_dry(
    version: ExecutableVersion, claim: ClaimedRun, codec: PayloadCodec, logger: Logger
) -> DryRunReport:
    """Replay `claim` on `version` without running or writing anything; `dry_run`'s report.

    `codec` opens the claim's payloads (the identity when they are open already). An
    exception of the version's code, or of the replay, is raised.
    """
    run = claim.run
    noting = _NotingCodec(run.id, codec)
    claim = claim.model_copy(update={"tasks": [noting.opened_through(t) for t in claim.tasks]})
    outcome: DryRunOutcome
    call = None
    async with anyio.create_task_group() as spawned:
        execution = Execution(
            _NoWrites(noting, logger),
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
    recorded = [t for t in claim.tasks if t.status in TASK_TERMINAL_STATUSES]
    reused = [_call(t) for t in recorded if _key(t) in noting.opened]
    return DryRunReport(
        run_id=run.id,
        version=version.version,
        outcome=outcome,
        reused=reused,
        would_run=call,
        not_reused=[_call(t) for t in recorded if _key(t) not in noting.opened],
        stopped_at=said,
    )


_MAX_FAILURE = 2000
"""The longest failure a dry-run answer carries (`DryRunAnswer.failure`)."""

REPLAYS_AT_ONCE = MAX_DRY_RUNS_PER_POLL
"""The most dry-run jobs a worker holds at once: each holds its run's whole history, and
a dry run may hand out a hundred (the directives poll asks for no more than the room)."""


class DryRunJobs:
    """Replays the dry-run jobs the directives poll hands a worker, and reports each.

    A replay that raises, or that runs past `MAX_DRY_RUN_WAIT`, is reported as a
    failure; nothing of it reaches the worker's loops. So is a report over the server's
    body limit (a run of thousands of task calls): left unanswered, its job would be
    handed out and replayed again and again until the dry run gave up. A report the
    server does not take otherwise is logged and dropped: the dry run lists the run as
    not replayed.
    """

    def __init__(
        self,
        client: WorkerApi,
        worker_id: str,
        versions: Mapping[tuple[str, str], ExecutableVersion],
        log: Logger,
    ) -> None:
        self._client = client
        self._worker_id = worker_id
        self._versions = versions
        self._log = log
        self.in_hand: set[str] = set()
        """The jobs replayed or reported now (the directives poll does not take them again)."""
        self.on_room: Callable[[], None] | None = None
        """Called when a job ends while the worker held `REPLAYS_AT_ONCE` (room again)."""

    @property
    def room(self) -> int:
        """How many more jobs the worker takes now."""
        return max(0, REPLAYS_AT_ONCE - len(self.in_hand))

    def take(self, jobs: list[DryRunJob], spawn: Callable[..., object]) -> None:
        """Start replaying each job not in hand already, while there is room."""
        for job in jobs:
            if job.job_id not in self.in_hand and self.room:
                self.in_hand.add(job.job_id)
                spawn(self._replay_and_report, job)

    async def _replay_and_report(self, job: DryRunJob) -> None:
        try:
            answer = await self._answer(job)
            try:
                await self._client.report_dry_run(job.job_id, answer)
            except PayloadTooLargeError as exc:
                await self._client.report_dry_run(job.job_id, self._too_large(answer, exc))
        # never raised into the worker's loops, which would stop the worker and its runs
        except Exception as exc:
            self._log.warn(
                "dry-run report not taken; the dry run lists the run as not replayed",
                {"job_id": job.job_id, "run_id": job.run.run.id, "error": str(exc)},
            )
        finally:
            full = not self.room
            self.in_hand.discard(job.job_id)
            if full and self.on_room is not None:
                self.on_room()

    def _too_large(self, answer: DryRunAnswer, refused: PayloadTooLargeError) -> DryRunAnswer:
        """The failure that stands for `answer`, too large to send: its outcome, and why."""
        outcome = "" if answer.report is None else f" (outcome {answer.report.outcome})"
        return self._failed(f"the replay's report{outcome} cannot be sent: {refused.message}")

    def _failed(self, failure: str) -> DryRunAnswer:
        """The answer of a job whose replay failed, as `failure` says (a NUL escaped)."""
        said = failure.replace("\x00", "\\x00")[:_MAX_FAILURE]
        return DryRunAnswer(worker_id=self._worker_id, failure=said)

    async def _answer(self, job: DryRunJob) -> DryRunAnswer:
        run = job.run.run
        version = self._versions.get((run.workflow, run.version))
        if version is None:
            return self._failed(
                f"the worker does not serve {run.workflow!r} version {run.version!r}"
            )
        log = self._log.child({"run_id": run.id, "dry_run_job": job.job_id})
        report = None
        try:
            with anyio.move_on_after(MAX_DRY_RUN_WAIT.total_seconds()):
                report = await replay_dry(version, job.run, self._client.codec, log)
        # the version's code or the replay failed: reported, never raised into the worker
        except (Exception, RunInterrupt, BaseExceptionGroup) as exc:
            failure = f"the replay raised {_described(exc)}"
        else:
            if report is not None:
                return DryRunAnswer(worker_id=self._worker_id, report=report)
            failure = f"the replay did not end within {MAX_DRY_RUN_WAIT}"
        log.warn("dry-run replay failed", {"error": failure})
        return self._failed(failure)


def _described(exc: BaseException) -> str:
    """`Type: message` of `exc`, or of the one exception a group of one holds."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


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


def _key(record: TaskRecord) -> str:
    return f"task:{record.address}:{record.occurrence}"


def _call(record: TaskRecord) -> RecordedCall:
    return RecordedCall(name=record.name, address=record.address, occurrence=record.occurrence)
