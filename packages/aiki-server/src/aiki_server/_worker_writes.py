"""The writes of a worker to the runs it holds.

Heartbeats, task records, children and transitions (complete, fail, suspend,
release, continue as new): one transaction each.
Each carries the revision its claim returned, and a stale one is rejected before
anything is written (`claimed_run`). A run claimed for its cleanup (`cleaning_up`) is
written the same way; whatever its worker reports then ends the run as its cleanup
says (a release gives the cleanup back to be claimed again).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Protocol

from aiki_core import (
    ConflictError,
    ErrorInfo,
    IllegalTransitionError,
    NotFoundError,
    RunLimitError,
    RunRecordLimitError,
    RunStatus,
    StaleRevisionError,
    TaskStatus,
)
from aiki_core.wire import (
    CompleteRun,
    ContinueRun,
    FailRun,
    HeartbeatResponse,
    RecordTaskResponse,
    ReleaseRun,
    RunDirective,
    RunLeaseStatus,
    StartRunResponse,
    SuspendRun,
    content_hash,
    to_millis,
)
from aiki_server._clock import to_ms
from aiki_server._lifecycle import (
    HELD,
    HISTORY_INSERT,
    claimed_run,
    end_cleanup,
    hand_cleanup,
    lock_run,
    locked_run,
    move_run,
    read_summary,
    record_history,
    requeue,
)
from aiki_server._rows import dump, new_id, run_summary
from aiki_server._starts import insert_run
from aiki_server._transitions import check_task_transition
from aiki_server._waits import due_at, suspend

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiki_core.wire import (
        AbandonedTaskRequest,
        HeartbeatRequest,
        RecordTaskRequest,
        RunAction,
        RunSummary,
        StartChildRequest,
        TransitionRunRequest,
    )
    from aiki_server._clock import Clock
    from aiki_server._limits import Limits
    from aiki_server._storage._database import Database, Row, Tx


_RELEASED = "released by its worker"


class WorkerWrites:
    """What a worker writes to the runs it holds."""

    def __init__(self, db: Database, clock: Clock, limits: Limits) -> None:
        self._db = db
        self._clock = clock
        self._limits = limits

    async def heartbeat(self, namespace: str, req: HeartbeatRequest) -> HeartbeatResponse:
        """Refresh the claims a worker holds; say what to do with each run."""

        async def refresh(tx: Tx) -> HeartbeatResponse:
            now = self._clock()
            await tx.execute(
                "UPDATE workers SET last_seen_at = $3 WHERE namespace = $1 AND id = $2",
                namespace,
                req.worker_id,
                now,
            )
            if not req.runs:
                return HeartbeatResponse(runs=[])
            directives = await lease_directives(tx, namespace, req.worker_id, req.runs)
            answers: list[RunLeaseStatus] = []
            keep: list[str] = []
            for lease, directive in zip(req.runs, directives, strict=True):
                if directive in (RunDirective.CONTINUE, RunDirective.PAUSE):
                    keep.append(lease.run_id)  # a pausing run keeps its claim to the boundary
                answers.append(RunLeaseStatus(run_id=lease.run_id, directive=directive))
            if keep:
                # the conditions fence a release that committed after the read above
                await tx.execute(
                    "UPDATE runs SET claim_expires_at = $1 WHERE claimed_by = $2"
                    f" AND status {tx.in_array(4)} AND id {tx.in_array(3)}",
                    now + self._limits.claim_idle_ms,
                    req.worker_id,
                    tx.array(keep),
                    tx.array(list(HELD)),
                )
            return HeartbeatResponse(runs=answers)

        return await self._db.write(refresh)

    async def note_abandoned(
        self, namespace: str, run_id: str, req: AbandonedTaskRequest
    ) -> RunSummary:
        """Note in the run's history that a task attempt's thread ignored its cancellation.

        From the worker that held the run at `req.revision`: the run has been fenced
        since, most likely (cancelled), so only a revision the run never had is refused.
        """

        async def note(tx: Tx) -> RunSummary:
            run = await locked_run(tx, run_id, namespace)
            if req.revision > run["revision"]:
                raise StaleRevisionError(run_id, req.revision, run["revision"])
            # a row of its history like any, whatever its status: refused past the bound
            self._check_history(run, in_cleanup=True)
            await tx.execute(
                "UPDATE runs SET history_count = history_count + 1 WHERE id = $1", run_id
            )
            seconds = req.grace.total_seconds()
            where = "" if req.worker_id is None else f" on worker {req.worker_id}"
            await record_history(
                tx,
                namespace=namespace,
                run_id=run_id,
                entity="run",
                entity_id=run_id,
                from_status=run["status"],
                to_status=run["status"],
                reason=(
                    f"task {req.task_name!r} attempt {req.attempt} abandoned: its thread"
                    f" ignored cancellation and still ran {seconds:g} s later{where}"
                )[:1000],
                revision=run["revision"],
                now=self._clock(),
            )
            return await read_summary(tx, run_id)

        return await self._db.write(note)

    async def record_task(
        self, namespace: str, run_id: str, req: RecordTaskRequest
    ) -> RecordTaskResponse:
        """Record one attempt of a task call of a claimed run."""

        async def record(tx: Tx) -> RecordTaskResponse:
            run = await claimed_run(tx, run_id, namespace, req.revision)
            self._check_history(run)
            now = self._clock()
            recorded = await write_task(tx, run, req, now, self._limits)
            if run["pause_requested"]:  # the worker learns it at its next record
                recorded = recorded.model_copy(update={"directive": RunDirective.PAUSE})
            return recorded

        try:
            return await self._db.write(record)
        except (RunLimitError, RunRecordLimitError) as exc:
            await self._fail_over_limit(namespace, run_id, req.revision, exc)
            raise

    async def start_child(
        self, namespace: str, parent_id: str, req: StartChildRequest
    ) -> StartRunResponse:
        """Start a child of a claimed run, once per (address, occurrence)."""

        async def start(tx: Tx) -> StartRunResponse:
            parent = await claimed_run(tx, parent_id, namespace, req.revision)
            now = self._clock()
            existing = await tx.fetchrow(
                "SELECT * FROM runs WHERE parent_run_id = $1 AND child_address = $2"
                " AND child_occurrence = $3",
                parent_id,
                req.address,
                req.occurrence,
            )
            if existing is not None:
                return StartRunResponse(run=run_summary(existing), created=False)
            pool = req.pool or parent["pool"]
            row = await insert_run(
                tx,
                namespace=namespace,
                workflow=req.workflow,
                version=req.version,
                pool=pool,
                input_json=self._limits.dump_payload(req.input, "input"),
                fingerprint=content_hash([req.version, content_hash(req.input), pool]),
                reference_id=None,
                start_at=None,
                timeout_ms=None if req.timeout is None else to_millis(req.timeout),
                now=now,
                run_id=req.run_id,
                parent=(parent_id, req.address, req.occurrence),
                parent_close_policy=req.parent_close_policy,
                trace_context=req.trace_context,
                priority=req.priority or 0,
                concurrency=req.concurrency,
            )
            return StartRunResponse(run=run_summary(row), created=True)

        return await self._db.write(start)

    async def transition(
        self, namespace: str, run_id: str, req: TransitionRunRequest
    ) -> RunSummary:
        """Complete, fail, suspend, release or continue a claimed run."""
        try:
            return await self._transition(namespace, run_id, req)
        except (RunLimitError, RunRecordLimitError) as exc:
            await self._fail_over_limit(namespace, run_id, req.revision, exc)
            raise

    async def _transition(
        self, namespace: str, run_id: str, req: TransitionRunRequest
    ) -> RunSummary:
        action = req.action

        async def move(tx: Tx) -> RunSummary:
            run = await claimed_run(tx, run_id, namespace, req.revision)
            self._check_history(run)
            now = self._clock()
            for task in req.tasks:  # each record is fenced like the transition
                if task.revision != req.revision:
                    raise StaleRevisionError(run_id, task.revision, run["revision"])
            for task in req.tasks:
                await write_task(tx, run, task, now, self._limits)
            if run["status"] == RunStatus.CLEANING_UP:
                await _after_cleanup(tx, run, action, now)
            elif isinstance(action, CompleteRun):
                await move_run(
                    tx,
                    run,
                    RunStatus.COMPLETED,
                    now,
                    "completed",
                    result=self._limits.dump_payload(action.result, "result"),
                )
            elif isinstance(action, FailRun):
                await _fail(tx, run, action, now)
            elif isinstance(action, SuspendRun):
                await suspend(tx, run, action.waits, now)
            elif isinstance(action, ReleaseRun):
                await requeue(tx, run, now, _RELEASED)
            elif isinstance(action, ContinueRun):
                await _continue(tx, run, action, now, self._limits)
            return await read_summary(tx, run_id)

        return await self._db.write(move)

    async def release(
        self, namespace: str, run_id: str, revision: int, reason: str = _RELEASED
    ) -> bool:
        """Give a claimed run back to the queue, fenced by its claim's `revision`.

        The `ReleaseRun` transition without a request: whether the claim still held
        the run (a run that moved on, ended, or was claimed again, is left alone).
        """

        async def move(tx: Tx) -> None:
            run = await claimed_run(tx, run_id, namespace, revision)
            await _release(tx, run, self._clock(), reason)

        try:
            await self._db.write(move)
        except (NotFoundError, StaleRevisionError, IllegalTransitionError):
            return False
        return True

    def _check_history(self, run: Row, *, in_cleanup: bool = False) -> None:
        """`RunRecordLimitError` when the run's history reached `max_history_per_run`.

        The count is kept on the run's row by the writes that change it anyway: each
        status move of the run, each new task call and each note of an abandoned task.
        A worker's next write to a run at the bound is refused, and the run fails (a
        loop of sleeps or waits that never ends, say, which no task call limit would
        catch). A cleanup's writes are not held to it (unless `in_cleanup`): its deadline
        bounds them, and the cancel that began it may have reached the bound (a refusal
        would leave it no way to report).
        """
        if run["status"] == RunStatus.CLEANING_UP and not in_cleanup:
            return
        limit = self._limits.max_history_per_run
        if int(run["history_count"]) >= limit:
            raise RunRecordLimitError(run["id"], "history", limit)

    async def _fail_over_limit(
        self, namespace: str, run_id: str, revision: int, exc: RunLimitError | RunRecordLimitError
    ) -> None:
        """Fail the run whose record was refused over the limit (the refusal wrote nothing).

        The worker that holds it gets the refusal (a 409) and lets the run go. A run
        cleaning up ends then as its cleanup says, rather than at its deadline.
        """

        async def fail(tx: Tx) -> None:
            run = await lock_run(tx, run_id, namespace)
            now = self._clock()
            if run is None or run["revision"] != revision or run["status"] not in HELD:
                return  # another write ended the claim meanwhile
            reason = f"{'task' if isinstance(exc, RunLimitError) else exc.kind} limit reached"
            if run["status"] == RunStatus.CLEANING_UP:
                await end_cleanup(tx, run, now, f"{reason} during its cleanup")
                return
            error = ErrorInfo.from_exception(exc, include_stack=False)
            await move_run(
                tx,
                run,
                RunStatus.FAILED,
                now,
                reason,
                fence=True,
                error=dump(error.model_dump(mode="json")),
            )

        await self._db.write(fail)


async def _release(tx: Tx, run: Row, now: int, reason: str) -> None:
    """Give a claimed run back: to the queue, or a cleanup to be claimed again."""
    if run["status"] == RunStatus.CLEANING_UP:
        await hand_cleanup(tx, run, now, reason, worker_id=None, expires=None)
    else:
        await requeue(tx, run, now, reason)


async def _after_cleanup(tx: Tx, run: Row, action: RunAction, now: int) -> None:
    """A cleanup's report: the run ends as its cleanup says, unless it was given back.

    The code's own outcome (a result, an error, a wait) does not change how the run
    ends: it was cancelled or timed out, with the error it already has.
    """
    if isinstance(action, ReleaseRun):
        await _release(tx, run, now, _RELEASED)
    else:
        await end_cleanup(tx, run, now, f"cleaned up ({action.kind} reported)")


async def _continue(tx: Tx, run: Row, action: ContinueRun, now: int, limits: Limits) -> None:
    """End `run` as completed, continued as a new run of its version with the input."""
    if run["parent_run_id"] is not None:
        # the parent waits for this run's own result: a chain would leave it none
        raise ConflictError(
            f"run {run['id']} is a child run; a child cannot continue as new",
            details={"run_id": run["id"]},
        )
    await insert_run(
        tx,
        namespace=run["namespace"],
        workflow=run["workflow"],
        version=run["version"],
        pool=run["pool"],
        input_json=limits.dump_payload(action.input, "input"),
        fingerprint=content_hash([run["version"], content_hash(action.input), run["pool"]]),
        reference_id=None,
        start_at=None,
        timeout_ms=run["timeout_ms"],
        now=now,
        run_id=action.run_id,
        continued_from=run["id"],
        # the new run goes on with the work, in the trace it was part of
        trace_context=run["trace_context"] and json.loads(run["trace_context"]),
        schedule_id=run["schedule_id"],
        # and keeps its place in flow control: its priority and concurrency key
        priority=run["priority"],
        concurrency_key=run["concurrency_key"],
    )
    if run["schedule_id"] is not None:
        # the schedule's overlap policy looks at its last run: that is now the new one
        await tx.execute(
            "UPDATE schedules SET last_run_id = $2 WHERE id = $1 AND last_run_id = $3",
            run["schedule_id"],
            action.run_id,
            run["id"],
        )
    await move_run(
        tx,
        run,
        RunStatus.COMPLETED,
        now,
        f"continued as run {action.run_id}",
        continued_as=action.run_id,
    )


async def _fail(tx: Tx, run: Row, action: FailRun, now: int) -> None:
    error = dump(action.error.model_dump(mode="json"))
    if not action.retries:
        await move_run(tx, run, RunStatus.FAILED, now, "failed", error=error)
        return
    retry_at = due_at(now, action.retry_at, action.retry_delay)
    await move_run(
        tx,
        run,
        RunStatus.AWAITING_RETRY,
        now,
        "failed; the workflow retries",
        error=error,
        attempt=int(run["attempt"]) + 1,
        wake_at=retry_at,
        waits=dump([{"kind": "retry", "due_at": retry_at}]),
    )


class HeldRun(Protocol):
    """A run a worker says it holds: a heartbeat's lease, a directives poll's watched run."""

    @property
    def run_id(self) -> str: ...

    @property
    def revision(self) -> int: ...


async def lease_directives(
    tx: Tx, namespace: str, worker_id: str, held: Sequence[HeldRun]
) -> list[RunDirective]:
    """What the worker must do now with each run it holds, in the order of `held`."""
    rows = await tx.fetch(
        "SELECT id, status, revision, claimed_by, pause_requested, cleanup_status FROM runs"
        f" WHERE namespace = $1 AND id {tx.in_array(2)}",
        namespace,
        tx.array([run.run_id for run in held]),
    )
    by_id = {row["id"]: row for row in rows}
    return [_directive(by_id.get(run.run_id), run.revision, worker_id) for run in held]


def _directive(run: Row | None, revision: int, worker_id: str) -> RunDirective:
    """What the worker holding `run` at `revision` must do with it now."""
    if run is None:
        return RunDirective.LOST
    if run["status"] == RunStatus.CANCELLED:
        return RunDirective.CANCEL
    if run["revision"] != revision or run["claimed_by"] != worker_id:
        # the worker that held a run cancelled into its cleanup is told it was cancelled
        cancelled = run["cleanup_status"] == RunStatus.CANCELLED
        if run["status"] == RunStatus.CLEANING_UP and cancelled:
            return RunDirective.CANCEL
        return RunDirective.LOST
    if run["status"] not in HELD:
        return RunDirective.LOST
    if run["pause_requested"]:
        return RunDirective.PAUSE  # stop at the next task boundary, with the claim
    return RunDirective.CONTINUE


_OUTCOMES = {
    TaskStatus.COMPLETED: "completed",
    TaskStatus.AWAITING_RETRY: "retry",
    TaskStatus.FAILED: "failed",
}
"""The `outcome` label of an attempt that ended with the task in this status."""


_NEW_TASK = (
    "INSERT INTO tasks (id, run_id, address, occurrence, name, status, input,"
    " result, error, next_attempt_at, created_at, finished_at, run_attempt, notice)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    " ON CONFLICT (run_id, address, occurrence) DO NOTHING RETURNING id"
)
"""A task call's first record, unless the call has one ($1-$14: the task's columns)."""
_COUNT_TASK = (
    "UPDATE runs SET task_count = task_count + 1, history_count = history_count + 1,"
    " claim_expires_at = CASE WHEN claim_expires_at IS NULL THEN NULL ELSE $2 END"
    " WHERE id = $1 RETURNING task_count"
)
"""One more task, and one more history row, on the run's row; the run's task count.

The record comes from the run's worker ($2: its claim's new expiry): alive, whatever its
heartbeats met (a server just restarted after an outage longer than the idle timeout
would otherwise take the run from a worker that is recording its next task)."""
_NEW_TASK_AT_ONCE = (
    f"WITH task AS ({_NEW_TASK}),"
    " attempt AS (INSERT INTO task_attempts"
    " (task_id, attempt, status, started_at, finished_at, error, run_attempt)"
    " SELECT id, $15::bigint, $6, $16::bigint, $17::bigint, $9, $13 FROM task),"
    f" history AS ({HISTORY_INSERT}"
    " SELECT $18::text, $2, 'task', id, NULL, $6, $19::text, $20::bigint, $11 FROM task),"
    " counted AS (UPDATE runs SET task_count = task_count + 1,"
    " history_count = history_count + 1, claim_expires_at = CASE WHEN claim_expires_at"
    " IS NULL THEN NULL ELSE $21::bigint END"
    " WHERE id = $2 AND EXISTS (SELECT 1 FROM task) RETURNING task_count)"
    " SELECT EXISTS (SELECT 1 FROM task) AS inserted, (SELECT task_count FROM counted)"
    " AS task_count"
)
"""`_NEW_TASK`, then, if it inserted, `_COUNT_TASK`, the first attempt ($15-$17: its
number, start and end) and its history row ($18-$20: the run's namespace, the reason,
the run's revision), in one statement ($21: the claim's new expiry): whether it
inserted, and the run's task count."""


async def write_task(
    tx: Tx, run: Row, req: RecordTaskRequest, now: int, limits: Limits
) -> RecordTaskResponse:
    """Write one task attempt of a run its worker holds (checked by the caller).

    A new task call past `limits.max_tasks_per_run` of the run raises `RunLimitError`,
    an input or result over `limits.max_payload_bytes` `PayloadTooLargeError`. A call that
    failed for good in an earlier workflow-level attempt of the run may be recorded
    again by a later one (it runs again); its attempts keep their numbers and history.
    """
    run_id = run["id"]
    run_attempt = int(run["attempt"])
    error_json = None if req.error is None else dump(req.error.model_dump(mode="json"))
    finished = now if req.status in (TaskStatus.COMPLETED, TaskStatus.FAILED) else None
    next_attempt_at = due_at(now, req.retry_at, req.retry_delay)
    result_json = (
        None
        if req.status is not TaskStatus.COMPLETED
        else limits.dump_payload(req.result, "result")
    )
    attempt_finished = None if req.status is TaskStatus.RUNNING else now
    attempt_started = now if req.started_at is None else min(to_ms(req.started_at), now)
    reason = f"{req.name} attempt {req.attempt}"
    # most calls are recorded once, completed: try the insert first
    task_id = new_id()
    previous = None
    values = (
        task_id,
        run_id,
        req.address,
        req.occurrence,
        req.name,
        req.status.value,
        limits.dump_payload(req.input, "input"),
        result_json,
        error_json,
        next_attempt_at,
        now,
        finished,
        run_attempt,
        req.notice,
    )
    # counted on the run's row: the check costs no count of the run's tasks
    expires = now + limits.claim_idle_ms
    if tx.writable_ctes:  # the task, its count, first attempt and history: one round trip
        history = (run["namespace"], reason, run["revision"])
        args = (*values, req.attempt, attempt_started, attempt_finished, *history, expires)
        written = await tx.fetchrow(_NEW_TASK_AT_ONCE, *args)
        assert written is not None  # a SELECT of two values: always one row
        inserted = bool(written["inserted"])
        counted = written["task_count"]
    else:
        inserted = bool(await tx.fetch(_NEW_TASK, *values))
        row = await tx.fetchrow(_COUNT_TASK, run_id, expires) if inserted else None
        counted = None if row is None else row["task_count"]
    if inserted:
        assert counted is not None  # the caller holds the run's row
        if counted > limits.max_tasks_per_run:
            raise RunLimitError(run_id, limits.max_tasks_per_run)  # the transaction writes nothing
    if not inserted:
        task = await tx.fetchrow(
            f"SELECT id, status, result, error, run_attempt FROM tasks"
            f" WHERE run_id = $1 AND address = $2"
            f" AND occurrence = $3{tx.lock_rows}",
            run_id,
            req.address,
            req.occurrence,
        )
        assert task is not None  # the insert met it; nothing deletes tasks
        task_id = task["id"]
        previous = task["status"]
        later_run_attempt = task["run_attempt"] < run_attempt
        if (
            previous == req.status.value
            and req.status.is_terminal
            and not later_run_attempt
            and (task["result"], task["error"]) == (result_json, error_json)
        ):
            # the same record again: a worker retrying a write whose answer it lost
            return RecordTaskResponse(task_id=task_id, status=req.status)
        check_task_transition(
            task_id, TaskStatus(previous), req.status, later_run_attempt=later_run_attempt
        )
        await tx.execute(
            "UPDATE tasks SET status = $2, result = $3, error = $4, next_attempt_at = $5,"
            " finished_at = $6, run_attempt = $7, notice = COALESCE(notice, $8) WHERE id = $1",
            task_id,
            req.status.value,
            result_json,
            error_json,
            next_attempt_at,
            finished,
            run_attempt,
            req.notice,
        )
    if attempt_finished is not None:
        outcome = _OUTCOMES[req.status]
        seconds = (attempt_finished - attempt_started) / 1000
        tx.observe(lambda metrics: metrics.task_attempt(req.name, outcome, seconds))
    if inserted and tx.writable_ctes:
        return RecordTaskResponse(task_id=task_id, status=req.status)
    await tx.execute(
        "INSERT INTO task_attempts"
        " (task_id, attempt, status, started_at, finished_at, error, run_attempt)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (task_id, attempt) DO UPDATE"
        " SET status = excluded.status, finished_at = excluded.finished_at,"
        " error = excluded.error",
        task_id,
        req.attempt,
        req.status.value,
        attempt_started,
        attempt_finished,
        error_json,
        run_attempt,
    )
    await record_history(
        tx,
        namespace=run["namespace"],
        run_id=run_id,
        entity="task",
        entity_id=task_id,
        from_status=previous,
        to_status=req.status.value,
        reason=reason,
        revision=run["revision"],
        now=now,
    )
    return RecordTaskResponse(task_id=task_id, status=req.status)
