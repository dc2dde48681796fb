"""Suspension: the waits a worker reports for its run, registered and checked.

A run suspends on the waits its replay reported (sleeps, events, children, a retry
back-off, a long remote task attempt). Each is registered the first time it is
reported, with its due time on this server's clock; one reported again keeps its
registration. A wait already over (its event came, its child ended, its time passed,
its task answered) re-queues the run instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiki_core import NotFoundError, RunStatus, TaskStatus
from aiki_core.wire import AwaitChild, AwaitEvent, AwaitRetry, AwaitSleep, AwaitTask, to_millis
from aiki_server._clock import to_ms
from aiki_server._lifecycle import TERMINAL, move_run, requeue, withdraw_waits
from aiki_server._rows import dump, load

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime, timedelta

    from pydantic import JsonValue

    from aiki_core.wire import RunWait
    from aiki_server._storage._database import Row, Tx

_WAIT_STATUS_BY_KIND = {
    "child": RunStatus.AWAITING_CHILD,
    "event": RunStatus.AWAITING_EVENT,
    "sleep": RunStatus.SLEEPING,
    "retry": RunStatus.AWAITING_RETRY,
    "task": RunStatus.AWAITING_TASK,
}
_WAIT_PRIORITY = ("child", "sleep", "event", "task", "retry")
"""The status of a run suspended on several kinds of wait says the first kind here.

A pending sleep makes a run `sleeping` (which `wake` ends) unless it awaits a child,
whose sleep beside it is most often that wait's timeout."""


async def suspend(tx: Tx, run: Row, waits: Sequence[RunWait], now: int) -> None:
    """Suspend the run on the waits its worker reported, or re-queue it if one is over.

    Each wait is registered the first time it is reported, its due time counted on
    this server's clock; one registered before keeps its due time, and one
    withdrawn before is live again. Every other wait of the run is withdrawn (it
    was withdrawn when the run was last re-queued, and stays so).
    """
    satisfied: list[str] = []
    pending: list[JsonValue] = []
    due_times: list[int] = []
    # event waits in order of occurrence: the oldest kept event goes to the first
    for wait in sorted(waits, key=_registration_order):
        over, due = await _register_wait(tx, run["id"], wait, now)
        if over is not None:
            satisfied.append(over)
        if due is not None:
            due_times.append(due)
        pending.append({**_wait_key(wait), "due_at": due})
    if satisfied:
        # a wait is already over: nothing to suspend for; the worker claims it again
        await withdraw_waits(tx, run["id"])
        await requeue(tx, run, now, "; ".join(satisfied))
        return
    kind = next(k for k in _WAIT_PRIORITY if any(w.kind == k for w in waits))
    await move_run(
        tx,
        run,
        _WAIT_STATUS_BY_KIND[kind],
        now,
        _suspension_reason(waits),
        wake_at=min(due_times) if due_times else None,
        waits=dump(pending),
    )


def _suspension_reason(waits: Sequence[RunWait]) -> str:
    """The history entry's reason: the kinds of wait, and what a wait says of itself."""
    said = [w.reason for w in waits if isinstance(w, AwaitRetry) and w.reason]
    kinds = f"suspended on {', '.join(sorted({w.kind for w in waits}))}"
    return "; ".join([kinds, *said])


async def _register_wait(
    tx: Tx, run_id: str, wait: RunWait, now: int
) -> tuple[str | None, int | None]:
    """Register (or revive) one reported wait: why it is over already, and its due time."""
    if isinstance(wait, AwaitSleep):
        return await _register_sleep(tx, run_id, wait, now)
    if isinstance(wait, AwaitEvent):
        return await _register_event_wait(tx, run_id, wait, now)
    if isinstance(wait, AwaitChild):
        child = await tx.fetchrow(
            "SELECT status FROM runs WHERE id = $1 AND parent_run_id = $2",
            wait.child_run_id,
            run_id,
        )
        if child is None:
            raise NotFoundError("child run", wait.child_run_id)
        if child["status"] in TERMINAL:
            return f"child {wait.child_run_id} has ended", None
        await tx.execute(
            "INSERT INTO child_waits (run_id, child_run_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            run_id,
            wait.child_run_id,
        )
        return None, None
    if isinstance(wait, AwaitTask):
        return await _task_answered(tx, run_id, wait), None
    retry_at = await _retry_due(tx, run_id, wait)
    return ("the retry is due" if retry_at is None or retry_at <= now else None), retry_at


def due_at(now: int, at: datetime | None, after: timedelta | None) -> int | None:
    """A due time in epoch ms: `at` as given, or `after` from `now` (this server's clock)."""
    if at is not None:
        return to_ms(at)
    return None if after is None else now + to_millis(after)


def _registration_order(wait: RunWait) -> tuple[int, str, int]:
    if isinstance(wait, AwaitEvent):
        return 1, wait.name, wait.occurrence
    return 0, "", 0  # sorted() keeps the reported order of the others


def _wait_key(wait: RunWait) -> dict[str, JsonValue]:
    """What tells a wait apart, as a run's detail lists it."""
    return wait.model_dump(
        mode="json", include={"kind", "name", "occurrence", "child_run_id", "address", "reason"}
    )


async def _register_sleep(
    tx: Tx, run_id: str, wait: AwaitSleep, now: int
) -> tuple[str | None, int]:
    """Register (or revive) a sleep: why it is over already, and its due time."""
    await tx.execute(
        "INSERT INTO sleeps (run_id, name, occurrence, status, wake_at)"
        " VALUES ($1, $2, $3, 'sleeping', $4) ON CONFLICT (run_id, name, occurrence)"
        " DO UPDATE SET status = 'sleeping' WHERE sleeps.status = 'withdrawn'",
        run_id,
        wait.name,
        wait.occurrence,
        due_at(now, wait.wake_at, wait.duration),
    )
    sleep = await tx.fetchrow(
        "SELECT status, wake_at FROM sleeps WHERE run_id = $1 AND name = $2 AND occurrence = $3",
        run_id,
        wait.name,
        wait.occurrence,
    )
    assert sleep is not None
    wake_at: int = sleep["wake_at"]
    if sleep["status"] != "sleeping":
        return f"sleep {wait.name!r} is over", wake_at
    if wake_at > now:
        return None, wake_at
    # due while the run was away (paused, say): it completes now
    await tx.execute(
        "UPDATE sleeps SET status = 'completed', completed_at = $4"
        " WHERE run_id = $1 AND name = $2 AND occurrence = $3",
        run_id,
        wait.name,
        wait.occurrence,
        now,
    )
    return f"sleep {wait.name!r} is due", wake_at


async def _register_event_wait(
    tx: Tx, run_id: str, wait: AwaitEvent, now: int
) -> tuple[str | None, int | None]:
    """Register (or revive) the wait; hand it the oldest event of its name kept for it.

    Why it is over already (an event, or its timeout), and its timeout.
    """
    await tx.execute(
        "INSERT INTO event_waits (run_id, name, occurrence, status, timeout_at)"
        " VALUES ($1, $2, $3, 'waiting', $4) ON CONFLICT (run_id, name, occurrence)"
        " DO UPDATE SET status = 'waiting' WHERE event_waits.status = 'withdrawn'",
        run_id,
        wait.name,
        wait.occurrence,
        due_at(now, wait.timeout_at, wait.timeout),
    )
    row = await tx.fetchrow(
        "SELECT status, timeout_at FROM event_waits WHERE run_id = $1 AND name = $2"
        " AND occurrence = $3",
        run_id,
        wait.name,
        wait.occurrence,
    )
    assert row is not None
    timeout_at: int | None = row["timeout_at"]
    if row["status"] != "waiting":
        return f"event {wait.name!r} is there", timeout_at
    # an event kept for it counts if it came in time, even while the wait was withdrawn
    # (the run was busy elsewhere) and its timeout has passed since
    event = await tx.fetchrow(
        "SELECT id FROM events WHERE run_id = $1 AND name = $2 AND consumed = 0"
        " AND (CAST($3 AS BIGINT) IS NULL OR received_at <= $3) ORDER BY received_at, id LIMIT 1",
        run_id,
        wait.name,
        timeout_at,
    )
    if event is not None:
        await deliver_event(tx, run_id, wait.name, wait.occurrence, event["id"])
        return f"event {wait.name!r} is there", timeout_at
    if timeout_at is not None and timeout_at <= now:
        await tx.execute(
            "UPDATE event_waits SET status = 'timed_out' WHERE run_id = $1 AND name = $2"
            " AND occurrence = $3",
            run_id,
            wait.name,
            wait.occurrence,
        )
        return f"the wait for event {wait.name!r} timed out", timeout_at
    return None, timeout_at


async def _retry_due(tx: Tx, run_id: str, wait: AwaitRetry) -> int | None:
    """When the retry is due: `retry_at`, or the task call's next attempt (`None`: now)."""
    if wait.retry_at is not None:
        return to_ms(wait.retry_at)
    task = await tx.fetchrow(
        "SELECT status, next_attempt_at FROM tasks WHERE run_id = $1 AND address = $2"
        " AND occurrence = $3",
        run_id,
        wait.address,
        wait.occurrence,
    )
    if task is None:
        raise NotFoundError("task call", f"{wait.address}#{wait.occurrence}")
    if task["status"] != TaskStatus.AWAITING_RETRY:
        return None  # its next attempt was recorded meanwhile: nothing to wait for
    due: int | None = task["next_attempt_at"]
    return due


async def _task_answered(tx: Tx, run_id: str, wait: AwaitTask) -> str | None:
    """Why the wait for a long remote attempt is over already (its outcome is recorded)."""
    task = await tx.fetchrow(
        "SELECT name, status FROM tasks WHERE run_id = $1 AND address = $2 AND occurrence = $3",
        run_id,
        wait.address,
        wait.occurrence,
    )
    if task is None:
        raise NotFoundError("task call", f"{wait.address}#{wait.occurrence}")
    if task["status"] == TaskStatus.RUNNING:
        return None
    return f"task {task['name']!r} answered"


def task_waits(run: Row) -> list[tuple[JsonValue, JsonValue]]:
    """The (address, occurrence) of each remote task attempt a suspended run waits for."""
    waits = load(run["waits"])
    if not isinstance(waits, list):
        return []
    return [
        (wait.get("address"), wait.get("occurrence"))
        for wait in waits
        if isinstance(wait, dict) and wait.get("kind") == "task"
    ]


async def deliver_event(tx: Tx, run_id: str, name: str, occurrence: int, event_id: str) -> None:
    """Hand the event to the run's wait of that name and occurrence, which consumes it."""
    await tx.execute(
        "UPDATE event_waits SET status = 'received', event_id = $4"
        " WHERE run_id = $1 AND name = $2 AND occurrence = $3",
        run_id,
        name,
        occurrence,
        event_id,
    )
    await tx.execute("UPDATE events SET consumed = 1 WHERE id = $1", event_id)
