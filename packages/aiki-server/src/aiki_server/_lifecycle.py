"""Status changes of runs: the one place that moves a run and writes its history.

Every change goes through `move_run` inside the caller's transaction: it checks the
state machine, updates the row, appends the `state_transitions` row, notes the
wake-ups to publish after commit, and, when a run ends, wakes a parent waiting for
it. A run moved away from `running` loses its claim; `fence=True` also bumps the
revision, so the worker that held it can write nothing more.

A running run whose pause was requested is paused when it leaves `running` for
anything but an end: its worker let it go at a task boundary (released it, or
suspended it on a wait), or its claim went idle. A paused run waits for nothing: its
waits are withdrawn, and its replay after resume reports again what it still waits
for; only a retry back-off, which no replay reports, keeps its due time, and resume
returns the run to `awaiting_retry` until then. Any move also clears the timer
daemon's failure count of the run: whatever made its due time fail is no longer what
the run waits on.

A run's waits are live only while it is suspended on them: the suspension registers
those the worker reported, and when the run stops waiting (re-queued, paused, ended)
the ones still pending are withdrawn; its next execution reports again whatever it
still waits for. So `end_wait`, the one rule of every wake-up, needs no status of
its own: a wait that ends re-queues the run, whatever else it waits for.

A run that ran (it is running or waiting, or has anything on record) and is then
cancelled or times out does not end at once: it goes to `cleaning_up` (fenced), with
the status it ends in (`cleanup_status`), its error, and a deadline of its own. A
worker claims it there (`hand_cleanup`: the status stays, the revision moves) and
replays it to run its cleanup code; whatever it reports then ends the run
(`end_cleanup`), as does the deadline, or a second cancel. Descendants are
cancelled at once, as before.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiki_core import (
    ErrorInfo,
    IllegalTransitionError,
    NotFoundError,
    ParentClosePolicy,
    RunStatus,
    StaleRevisionError,
)
from aiki_core.wire import RUN_WAITING_STATUSES, RunSummary
from aiki_server._logs import component, run_ids
from aiki_server._notify import (
    QUEUE,
    TIMERS,
    queued_topics,
    run_topic,
    slots_topic,
    worker_topic,
)
from aiki_server._rows import RUN_COLUMNS, dump, run_summary
from aiki_server._transitions import check_run_transition

if TYPE_CHECKING:
    from aiki_server._metrics import Metrics
    from aiki_server._storage._database import Row, Tx

_log = component("runs")

TERMINAL = tuple(s.value for s in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED))
HELD = (RunStatus.RUNNING.value, RunStatus.CLEANING_UP.value)
"""Statuses in which a worker may hold the run (a `cleaning_up` one once claimed)."""
_PAUSED_INSTEAD = frozenset({RunStatus.QUEUED, *RUN_WAITING_STATUSES})
"""Where a running run may go that a requested pause turns into `paused`."""


HISTORY_INSERT = (
    "INSERT INTO state_transitions"
    " (namespace, run_id, entity, entity_id, from_status, to_status, reason, revision, at)"
)
"""The start of a statement that appends a history row: its values (or a SELECT) follow."""


async def record_history(
    tx: Tx,
    *,
    namespace: str,
    run_id: str,
    entity: str,
    entity_id: str,
    from_status: str | None,
    to_status: str,
    reason: str | None,
    revision: int,
    now: int,
) -> None:
    """Append one row to the audit trail."""
    await tx.execute(
        f"{HISTORY_INSERT} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        namespace,
        run_id,
        entity,
        entity_id,
        from_status,
        to_status,
        reason,
        revision,
        now,
    )


_RUN_HISTORY = (
    f"history AS ({HISTORY_INSERT} VALUES ({{0}}, $1, 'run', $1, {{1}}, {{2}}, {{3}}, {{4}},"
    " {5}))"
)
"""A run's history row as a writable CTE of the statement that moves it (`$1`: the run's
id; the placeholders: its namespace, from and to status, reason, revision, time)."""


async def lock_run(tx: Tx, run_id: str, namespace: str) -> Row | None:
    """The run's row, locked for this transaction (PostgreSQL), or `None`.

    A claim skips a locked run (`Tx.skip_locked`) and waits for the next wake-up: the
    lock of a run waiting for a worker wakes its claims again once this transaction
    ends, whether or not it moves the run (an event sent to a queued run, say).
    """
    run = await tx.fetchrow(
        f"SELECT * FROM runs WHERE id = $1 AND namespace = $2{tx.lock_rows}", run_id, namespace
    )
    if run is not None:
        claims_look_again(tx, run)
    return run


def claims_look_again(tx: Tx, run: Row) -> None:
    """`run` is locked here: if it waits for a worker, its claims look again after `tx`.

    A claim skips a locked run (`Tx.skip_locked`), and nothing else may wake it.
    """
    if run["status"] in (RunStatus.QUEUED, RunStatus.CLEANING_UP):
        tx.publish(*queued_topics(run["namespace"], run["workflow"], run["version"], run["pool"]))


async def locked_run(tx: Tx, run_id: str, namespace: str) -> Row:
    """`lock_run`, or `NotFoundError` for a run the namespace does not hold."""
    run = await lock_run(tx, run_id, namespace)
    if run is None:
        raise NotFoundError("run", run_id)
    return run


async def claimed_run(tx: Tx, run_id: str, namespace: str, revision: int) -> Row:
    """The locked row of a claimed run its worker writes, fenced by the claim's `revision`.

    A stale revision raises `StaleRevisionError`, a run no worker holds (neither running
    nor claimed for its cleanup) `IllegalTransitionError`.
    """
    run = await locked_run(tx, run_id, namespace)
    if run["revision"] != revision:
        raise StaleRevisionError(run_id, revision, run["revision"])
    if run["status"] not in HELD or run["claimed_by"] is None:
        raise IllegalTransitionError("run", run_id, run["status"], "written by its worker")
    return run


async def read_summary(tx: Tx, run_id: str) -> RunSummary:
    """The run as this transaction sees it now."""
    row = await tx.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = $1", run_id)
    assert row is not None
    return run_summary(row)


async def move_run(
    tx: Tx,
    run: Row,
    target: RunStatus,
    now: int,
    reason: str,
    *,
    fence: bool = False,
    **columns: Any,
) -> int:
    """Move `run` to `target`, with extra column values; its revision afterwards."""
    current = RunStatus(run["status"])
    intended = target
    if current is RunStatus.RUNNING and run.get("pause_requested") and target in _PAUSED_INSTEAD:
        target, reason = RunStatus.PAUSED, f"paused as requested ({reason})"
    check_run_transition(run["id"], current, target)
    revision = int(run["revision"]) + (1 if fence else 0)
    values: dict[str, Any] = {
        "status": target.value,
        "updated_at": now,
        "revision": revision,
        "timer_failures": 0,
        "timer_error": None,
    }
    freed = current is RunStatus.RUNNING or (
        current is RunStatus.CLEANING_UP and run["claimed_by"] is not None
    )
    if freed:
        values |= {"claimed_by": None, "claim_expires_at": None, "pause_requested": 0}
    if current in RUN_WAITING_STATUSES or target is RunStatus.PAUSED:  # no longer suspended
        await withdraw_waits(tx, run["id"])
    if target in (RunStatus.QUEUED, RunStatus.CLEANING_UP):
        # ranked by priority alone (see `_flow`): a cheap write
        rank = now - int(run["priority"]) * tx.flow.step_ms
        values |= {"ready_at": now, "rank": rank, "wake_at": None}
    # long remote attempts of an ended run are dropped: their answers find no row (a
    # cleanup sees the cancellation where the run waited for one)
    drop_pushes = target.is_terminal or target is RunStatus.CLEANING_UP
    if target.is_terminal:
        values |= {"finished_at": now, "wake_at": None, "deadline_at": None}
    values |= columns
    if target is RunStatus.PAUSED or (current in RUN_WAITING_STATUSES and "waits" not in columns):
        values["waits"] = None
    if target is RunStatus.PAUSED and RunStatus.AWAITING_RETRY not in (current, intended):
        values["wake_at"] = None  # nothing wakes a paused run; resume replays its waits
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(values, start=2))
    # counted where the row is written anyway: the per-run history bound (`_worker_writes`)
    update = f"UPDATE runs SET {assignments}, history_count = history_count + 1 WHERE id = $1"
    if tx.writable_ctes:  # the pushes' drop, the row and its history: one round trip
        history = (run["namespace"], current.value, target.value, reason, revision, now)
        first = len(values) + 2
        ctes = ["pushes AS (DELETE FROM task_pushes WHERE run_id = $1)"] if drop_pushes else []
        ctes.append(_RUN_HISTORY.format(*(f"${first + i}" for i in range(len(history)))))
        await tx.execute(f"WITH {', '.join(ctes)} {update}", run["id"], *values.values(), *history)
    else:
        if drop_pushes:
            await tx.execute("DELETE FROM task_pushes WHERE run_id = $1", run["id"])
        await tx.execute(update, run["id"], *values.values())
        await record_history(
            tx,
            namespace=run["namespace"],
            run_id=run["id"],
            entity="run",
            entity_id=run["id"],
            from_status=current.value,
            to_status=target.value,
            reason=reason,
            revision=revision,
            now=now,
        )
    tx.publish(run_topic(run["id"]))
    if fence and freed:
        # taken from its worker (cancelled, timed out, claim idle): its directives poll answers
        tx.publish(worker_topic(run["namespace"], run["claimed_by"]))
    if target in (RunStatus.QUEUED, RunStatus.CLEANING_UP):  # a run (or a cleanup) to claim
        tx.publish(*queued_topics(run["namespace"], run["workflow"], run["version"], run["pool"]))
    # a run cleaning up holds its slot until it ends (`_flow`), claimed or not
    slot_freed = (current is RunStatus.RUNNING and target is not RunStatus.CLEANING_UP) or (
        current is RunStatus.CLEANING_UP and target.is_terminal
    )
    if slot_freed:
        # a slot of its concurrency limit free again: for a run of any of its triples. Its
        # polls look whatever this replica's view of the limits says (another replica may
        # have just set one); the push dispatcher, which looks at every endpoint, only when
        # the view says the workflow has a limit
        tx.publish(slots_topic(run["namespace"], run["workflow"]))
        if await tx.limited.includes(tx, run["namespace"], run["workflow"]):
            tx.publish(QUEUE)
    if values.get("wake_at") is not None or values.get("deadline_at") is not None:
        tx.publish(TIMERS)
    if target.is_terminal:
        tx.observe(lambda metrics: _ended(metrics, run, target, now))
        if run["parent_run_id"] is not None:
            await _wake_parent(tx, run, now)
        await _close_children(tx, run["id"], target, now, reason)
        if current is RunStatus.CLEANING_UP and run.get("schedule_id") is not None:
            await _release_held(tx, run, now)
    elif current is RunStatus.QUEUED and target is RunStatus.RUNNING:
        tx.observe(lambda metrics: metrics.run_claimed(run, now))
    return revision


def _ended(metrics: Metrics, run: Row, status: RunStatus, now: int) -> None:
    """Count and log a run's end (after its transaction committed)."""
    metrics.run_ended(run, status.value, now)
    _log.debug("run ended", {**run_ids(run), "status": status.value})


async def requeue(tx: Tx, run: Row, now: int, reason: str) -> None:
    """Put a waiting (or paused) run back in the queue."""
    await move_run(tx, run, RunStatus.QUEUED, now, reason)


async def end_wait(tx: Tx, run: Row, now: int, reason: str) -> None:
    """One of `run`'s live waits is over (`reason`): a suspended run goes back to the queue.

    Whatever else it waits for, and whatever its status says (`sleeping` beside an
    event wait, `awaiting_child` beside a sleep, ...): every wait that ends, by an
    event, a child's end, a due time or `wake`, comes through here. A run that is not
    suspended (it is running, say) is left alone: it reports its waits when it next
    suspends, and the server sees then which are over.
    """
    if RunStatus(run["status"]) in RUN_WAITING_STATUSES:
        await requeue(tx, run, now, reason)


async def withdraw_waits(tx: Tx, run_id: str) -> None:
    """Withdraw every live wait of the run: none of them wakes it or takes an event now."""
    await tx.execute(
        "UPDATE sleeps SET status = 'withdrawn' WHERE run_id = $1 AND status = 'sleeping'", run_id
    )
    await tx.execute(
        "UPDATE event_waits SET status = 'withdrawn' WHERE run_id = $1 AND status = 'waiting'",
        run_id,
    )
    await tx.execute("DELETE FROM child_waits WHERE run_id = $1", run_id)


async def _wake_parent(tx: Tx, child: Row, now: int) -> None:
    # The parent's row is locked before its waits are read. A parent suspending on
    # this child meanwhile holds that lock from before it reads the child's status:
    # either its wait is committed before this lock is granted (and seen below, as
    # each statement reads what is committed), or it reads this child as ended once
    # this commits, and does not suspend. Reading the waits first missed a wait
    # committed in between, and the parent slept forever (PostgreSQL). A parent queued
    # meanwhile is not woken here, but its claims look again (`lock_run`).
    child_run_id, parent_run_id = child["id"], child["parent_run_id"]
    parent = await lock_run(tx, parent_run_id, child["namespace"])
    if parent is None:
        return
    waiting = await tx.fetchrow(
        "SELECT 1 FROM child_waits WHERE run_id = $1 AND child_run_id = $2",
        parent_run_id,
        child_run_id,
    )
    if waiting is not None:
        await end_wait(tx, parent, now, f"child {child_run_id} ended")


async def _release_held(tx: Tx, run: Row, now: int) -> None:
    """Queue the schedule's next run held (`scheduled`) behind `run`'s cleanup, now it ended.

    A schedule's `cancel_previous` holds the new run until then (see `_schedules`).
    """
    schedule = await tx.fetchrow(
        "SELECT last_run_id FROM schedules WHERE id = $1", run["schedule_id"]
    )
    if schedule is None or schedule["last_run_id"] in (None, run["id"]):
        return
    held = await lock_run(tx, schedule["last_run_id"], run["namespace"])
    if held is not None and held["status"] == RunStatus.SCHEDULED:
        await requeue(tx, held, now, f"previous run {run['id']} of its schedule ended")


async def ran(tx: Tx, run: Row) -> bool:
    """Whether `run` has code to clean up: it is running or waiting, or has a record.

    A run never claimed (scheduled, queued or paused with nothing on record) has none.
    """
    status = RunStatus(run["status"])
    if status is RunStatus.RUNNING or status in RUN_WAITING_STATUSES:
        return True
    if status not in (RunStatus.QUEUED, RunStatus.PAUSED):
        return False
    row = await tx.fetchrow(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM tasks WHERE run_id = $1)"
        " OR EXISTS (SELECT 1 FROM sleeps WHERE run_id = $1)"
        " OR EXISTS (SELECT 1 FROM event_waits WHERE run_id = $1)"
        " OR EXISTS (SELECT 1 FROM runs WHERE parent_run_id = $1) THEN 1 ELSE 0 END AS ran",
        run["id"],
    )
    return row is not None and bool(row["ran"])


async def hand_cleanup(
    tx: Tx, run: Row, now: int, reason: str, *, worker_id: str | None, expires: int | None
) -> int:
    """Hand a `cleaning_up` run to `worker_id` (None: back to the queue); its new revision.

    The status stays; the revision moves, so the worker that held it can write no more.
    """
    revision = int(run["revision"]) + 1
    values: dict[str, Any] = {
        "claimed_by": worker_id,
        "claim_expires_at": expires,
        "revision": revision,
        "updated_at": now,
    }
    if worker_id is None:
        values |= {"ready_at": now, "rank": now - int(run["priority"]) * tx.flow.step_ms}
    names = list(values)
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
    await tx.execute(f"UPDATE runs SET {assignments} WHERE id = $1", run["id"], *values.values())
    status = RunStatus.CLEANING_UP.value
    await record_history(
        tx,
        namespace=run["namespace"],
        run_id=run["id"],
        entity="run",
        entity_id=run["id"],
        from_status=status,
        to_status=status,
        reason=reason,
        revision=revision,
        now=now,
    )
    tx.publish(run_topic(run["id"]))
    if worker_id is None:  # a cleanup to claim
        tx.publish(*queued_topics(run["namespace"], run["workflow"], run["version"], run["pool"]))
    return revision


async def end_cleanup(tx: Tx, run: Row, now: int, reason: str) -> None:
    """End a `cleaning_up` run as its cleanup says, with the error it has.

    Its live children go by their parent-close policies then (`_close_children`).
    """
    await move_run(tx, run, RunStatus(run["cleanup_status"]), now, reason, fence=True)


async def end_run_and_descendants(
    tx: Tx,
    run: Row,
    target: RunStatus,
    now: int,
    reason: str,
    error: ErrorInfo,
    *,
    cleanup: bool = False,
) -> None:
    """End `run` as `target` (fenced); its live children go by their parent-close policies.

    With `cleanup`, a run that `ran` goes to `cleaning_up` first, for the database's
    `cleanup_ms` at most, and its children are closed when it ends; a run already
    cleaning up ends at once.
    """
    error_json = dump(error.model_dump(mode="json"))
    if cleanup and run["status"] != RunStatus.CLEANING_UP and await ran(tx, run):
        await move_run(
            tx,
            run,
            RunStatus.CLEANING_UP,
            now,
            f"{reason}; cleaning up",
            fence=True,
            error=error_json,
            cleanup_status=target.value,
            deadline_at=now + tx.cleanup_ms,
        )
    else:
        await move_run(tx, run, target, now, reason, fence=True, error=error_json)


_CLOSABLE = (
    f"status NOT IN ({', '.join(repr(status) for status in TERMINAL)})"
    f" AND (parent_close_policy IS NULL OR parent_close_policy <> '{ParentClosePolicy.ABANDON}')"
    f" AND (status <> '{RunStatus.CLEANING_UP}'"
    f" OR parent_close_policy <> '{ParentClosePolicy.REQUEST_CANCEL}')"
)
"""A child its parent's end closes: live, not abandoned, nor a `request_cancel` one that
already cleans up (it finishes its cleanup)."""
CLOSE_INLINE = 200
"""The most children one transaction closes; the timer daemon closes the rest."""


@dataclass(slots=True)
class _Closing:
    """The parents whose children are still to close, while a transaction closes some."""

    pending: list[tuple[str, RunStatus, str]]
    budget: int
    """How many more children this transaction may close."""


_CLOSING: ContextVar[_Closing | None] = ContextVar("_CLOSING", default=None)


async def _close_children(
    tx: Tx, parent_id: str, target: RunStatus, now: int, parent_reason: str
) -> None:
    """Apply the parent-close policy of each live child of a parent that just ended.

    `terminate` ends the child cancelled at once, `request_cancel` cancels it as a
    client's cancel does (but lets a cleanup under way finish), `abandon` leaves it
    be. Either way the child's own live children then go by their own policies, as
    it ends. A tree of any depth is closed by one loop, level after level, not by
    recursion (a deep chain of children would exhaust the stack, and the parent could
    never end).

    One transaction closes `CLOSE_INLINE` children at most, so a parent with
    thousands ends in a short transaction: a parent with children left is marked
    (its `wake_at`, which an ended run has no other use for), and the timer daemon
    closes them, a batch per pass (`close_children_left`). The mark is written with
    the parent's end and cleared with its last child's, so a restart loses none.
    """
    closing = _CLOSING.get()
    if closing is not None:  # a closing further up takes this parent in its loop
        closing.pending.append((parent_id, target, parent_reason))
        return
    closing = _Closing([(parent_id, target, parent_reason)], CLOSE_INLINE)
    token = _CLOSING.set(closing)
    try:
        while closing.pending and closing.budget > 0:
            parent, status, reason = closing.pending.pop()
            closing.budget -= await _apply_policies(tx, parent, status, reason, now, closing.budget)
            if closing.budget <= 0:  # it may have more
                closing.pending.append((parent, status, reason))
        if closing.pending:
            # most of the runs just closed have no children: only parents are marked
            marked = await tx.execute(
                f"UPDATE runs SET wake_at = $2 WHERE id {tx.in_array(1)} AND EXISTS"
                " (SELECT 1 FROM runs AS child WHERE child.parent_run_id = runs.id"
                f" AND {_CLOSABLE})",
                tx.array([parent for parent, _, _ in closing.pending]),
                now,
            )
            if marked:
                tx.publish(TIMERS)
    finally:
        _CLOSING.reset(token)


async def close_children_left(tx: Tx, parent: Row, now: int) -> None:
    """Close the next children of an ended parent marked as having some left (the timer's).

    Idempotent: a child already ended (or abandoned) is not read again; the parent is
    marked again while children are left.
    """
    await tx.execute("UPDATE runs SET wake_at = NULL WHERE id = $1", parent["id"])
    ended = await tx.fetchrow(
        "SELECT reason FROM state_transitions WHERE run_id = $1 AND entity = 'run'"
        " AND to_status = $2 ORDER BY seq DESC LIMIT 1",
        parent["id"],
        parent["status"],
    )
    reason = ended["reason"] if ended is not None else f"ended as {parent['status']}"
    await _close_children(tx, parent["id"], RunStatus(parent["status"]), now, reason)


async def _apply_policies(
    tx: Tx, parent_id: str, target: RunStatus, parent_reason: str, now: int, limit: int
) -> int:
    """End or cancel up to `limit` live children of one ended parent; how many it took."""
    children = await _live_children(tx, parent_id, limit)
    ended = f"parent run {parent_id} ended as {target.value}"
    for child in children:
        if child["parent_close_policy"] == ParentClosePolicy.REQUEST_CANCEL:
            # one cleaning up already (cancelled or timed out) finishes that cleanup and
            # ends as it says: a second cancel would cut it short, and end it cancelled
            if child["status"] != RunStatus.CLEANING_UP:
                await cancel_run_and_descendants(tx, child, now, ended, cleanup=True)
            else:
                claims_look_again(tx, child)  # locked above, left as it is
            continue
        cancelled = ErrorInfo(
            type="aiki_core.WorkflowCancelledError",
            message=ended,
            retryable=False,
            code="workflow_cancelled",
            details={"run_id": child["id"], "reason": parent_reason},
        )
        await end_run_and_descendants(
            tx, child, RunStatus.CANCELLED, now, f"parent {parent_id} {target.value}", cancelled
        )
    return len(children)


async def _live_children(tx: Tx, parent_id: str, limit: int) -> list[Row]:
    """The first `limit` children of an ended parent that it closes (`_CLOSABLE`), locked.

    Read in the order of the parent's index of children (`runs_by_child_address`).
    """
    return await tx.fetch(
        f"SELECT * FROM runs WHERE parent_run_id = $1 AND {_CLOSABLE}"
        f" ORDER BY parent_run_id, child_address, child_occurrence LIMIT $2{tx.lock_rows}",
        parent_id,
        limit,
    )


async def cancel_run_and_descendants(
    tx: Tx, run: Row, now: int, reason: str | None, *, cleanup: bool = False
) -> None:
    """Cancel `run` (fenced); `reason` goes into its error.

    With `cleanup`, a run that ran cleans up first (see `end_run_and_descendants`). Its
    live children go by their parent-close policies (`_close_children`).
    """
    run_id = run["id"]
    error = ErrorInfo(
        type="aiki_core.WorkflowCancelledError",
        message=f"run {run_id} was cancelled" + (f": {reason}" if reason else ""),
        retryable=False,
        code="workflow_cancelled",
        details={"run_id": run_id, "reason": reason},
    )
    await end_run_and_descendants(
        tx, run, RunStatus.CANCELLED, now, reason or "cancelled", error, cleanup=cleanup
    )
