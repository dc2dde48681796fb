"""The timer daemon: moves every due time forward, in batches.

One pass handles, for at most `batch` runs each:
- due wake-ups (delayed starts, sleeps, event-wait timeouts, retry back-offs, and a
  sleep awaited together with a child, which is that child wait's timeout): the run
  goes back to the queue, its due sleeps complete and due waits time out;
- passed deadlines: the run fails with `WorkflowTimeoutError`, its children are
  cancelled, and a worker holding it is fenced off; a run that ran cleans up first
  (`cleaning_up`, until `cleanup_ms` more have passed), and a cleanup's own deadline
  ends the run as its cleanup would have;
- idle claims: a running run whose worker stopped heartbeating is re-queued
  (fenced), so another worker resumes it (a cleanup goes back to be claimed again);
- due schedules: each starts the run of its latest occurrence (as its overlap
  policy allows) and moves on to its next one (see `_schedules`);
- children left to close: an ended parent with more live children than its own
  transaction closed (`CLOSE_INLINE`) is marked with a `wake_at`, and each pass closes
  the next ones of one such parent, as their parent-close policies say (see
  `_lifecycle`), until none is left.

Rows are taken with `FOR NO KEY UPDATE SKIP LOCKED` on PostgreSQL, so replicas share the
work. Between passes the daemon sleeps until the next due time, or until a new one
is set (the `TIMERS` topic), and at most `max_idle` seconds.

A pass is one transaction, and each due row a unit of work that fails alone: a batch
runs in one savepoint, and if a row of it fails, the batch is undone and run again
row by row, a savepoint each, so one bad row cannot stop the pass. Rows are locked
when the batch is read; where one row's handling can move another of the batch (a
parent's deadline cancels its children), each is read again before it is handled
and skipped if no longer due, so a run's final status never changes. A failure is
counted on the row (`timer_failures`, with the error in `timer_error`, shown in the
run's or schedule's detail) and logged; after `SET_ASIDE_AFTER` failures in a row
the row is set aside: left out of every pass, and counted in `/health`, until the
run moves (cancelled, woken, ...) or the schedule is resumed. Each unit reads the
time once it holds its row, so a run's times are never older than its lock.
(Measured on 2000 due delayed starts: as fast as the single transaction it replaces
on PostgreSQL; a savepoint and a re-read per row made passes 1.5 times slower.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import anyio

from aiki_core import ErrorInfo, RunStatus, WorkflowTimeoutError
from aiki_server._lifecycle import (
    HELD,
    TERMINAL,
    close_children_left,
    end_cleanup,
    end_run_and_descendants,
    hand_cleanup,
    move_run,
    requeue,
)
from aiki_server._logs import component, run_ids
from aiki_server._notify import TIMERS, worker_topic
from aiki_server._rows import dump

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiki_server._clock import Clock
    from aiki_server._metrics import Metrics
    from aiki_server._notify import WakeHub
    from aiki_server._storage._database import Database, Row, Tx

_log = component("timers")

_WAKEABLE = tuple(
    s.value
    for s in (
        RunStatus.SCHEDULED,
        RunStatus.SLEEPING,
        RunStatus.AWAITING_EVENT,
        RunStatus.AWAITING_CHILD,  # its `wake_at` is set only by a sleep awaited beside it
        RunStatus.AWAITING_RETRY,
        RunStatus.AWAITING_TASK,  # its `wake_at` is set only by a retry awaited beside it
    )
)
_WAKEABLE_SQL = ", ".join(f"'{s}'" for s in _WAKEABLE)
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in TERMINAL)
_HELD_SQL = ", ".join(f"'{s}'" for s in HELD)

SET_ASIDE_AFTER = 5
"""Failures in a row after which the daemon leaves a due row alone."""
_LIVE = f"timer_failures < {SET_ASIDE_AFTER}"

_NEXT_DUE = " UNION ALL ".join(
    [
        # one status at a time: the earliest of each is the first of its range of
        # `runs_wake_due` (an `IN` would read every waiting run to find the least)
        *(
            f"SELECT MIN(wake_at) AS due FROM runs WHERE status = '{status}'"
            f" AND wake_at IS NOT NULL AND {_LIVE}"
            for status in (*_WAKEABLE, *TERMINAL)  # an ended run's: children left to close
        ),
        f"SELECT MIN(deadline_at) FROM runs WHERE deadline_at IS NOT NULL AND {_LIVE}",
        *(
            f"SELECT MIN(claim_expires_at) FROM runs WHERE status = '{status}'"
            f" AND claim_expires_at IS NOT NULL AND {_LIVE}"
            for status in sorted(HELD)
        ),
        f"SELECT MIN(next_fire_at) FROM schedules WHERE paused = 0 AND {_LIVE}",
    ]
)
"""The earliest due time of each kind (the timer daemon sleeps until the least)."""


@dataclass(frozen=True, slots=True)
class _Kind:
    """One kind of due row: where it lives, when it is due ($1 is now), how it is handled."""

    what: str
    table: str
    due: str
    order: str
    """The column that holds when a row is due."""
    handle: Callable[[Tx, Row, int], Awaitable[None]]
    reread: bool = False
    """Whether handling one row may move another of the same kind (in the same pass):
    each is then read again before it is handled, and skipped if no longer due."""
    batch: int | None = None
    """The most rows a pass takes, when fewer than the daemon's `batch`."""


class TimerDaemon:
    """Runs due timers until cancelled; `fire_schedule` handles a due (locked) schedule."""

    def __init__(
        self,
        db: Database,
        hub: WakeHub,
        clock: Clock,
        fire_schedule: Callable[[Tx, Row, int], Awaitable[None]],
        *,
        batch: int = 200,
        max_idle: float = 1.0,
    ):
        self._db = db
        self._hub = hub
        self._clock = clock
        self._batch = batch
        self._max_idle = max_idle
        self._kinds = (
            _Kind(
                "wake-up",
                "runs",
                f"wake_at <= $1 AND status IN ({_WAKEABLE_SQL})",
                "wake_at",
                _wake,
            ),
            _Kind(
                "deadline",
                "runs",
                f"deadline_at <= $1 AND status NOT IN ({_TERMINAL_SQL})",
                "deadline_at",
                _expire,
                reread=True,
            ),
            _Kind(
                "idle claim",
                "runs",
                f"claim_expires_at <= $1 AND status IN ({_HELD_SQL})",
                "claim_expires_at",
                _release_idle_claim,
            ),
            _Kind(
                "schedule",
                "schedules",
                "paused = 0 AND next_fire_at <= $1",
                "next_fire_at",
                fire_schedule,
            ),
            _Kind(
                "children left",
                "runs",
                f"wake_at <= $1 AND status IN ({_TERMINAL_SQL})",
                "wake_at",
                close_children_left,
                batch=1,  # one parent's `CLOSE_INLINE` children a pass: a short transaction
            ),
        )
        self._failed = 0
        """Units that failed in the last pass."""
        self._one_pass = anyio.Lock()
        """A replica's passes never overlap: one would skip the rows the other holds."""
        self.set_aside = 0
        """Rows set aside (runs and schedules), as last counted."""

    async def run_forever(self) -> None:
        """Pass after pass, sleeping in between until something is due.

        A failed pass (the database unreachable for a moment, say) is logged and tried
        again after `max_idle`: were the error to escape, it would end the app's
        lifespan and close the database under a server that goes on answering 500s.
        A pass in which units failed and nothing moved is followed by the same pause,
        so a failing row is tried about once per `max_idle` until it is set aside.
        """
        while True:
            with self._hub.subscribe(TIMERS) as subscription:
                try:
                    moved = await self.run_once()
                    if moved:
                        continue  # a full batch may mean more is due
                    next_due = await self._next_due()
                except Exception as exc:
                    self._db.metrics.timer_pass_failed()
                    _log.error("timer pass failed; trying again", {"error": repr(exc)})
                    await anyio.sleep(self._max_idle)
                    continue
                now = self._clock()
                delay = self._max_idle if next_due is None else (next_due - now) / 1000
                if self._failed:
                    delay = self._max_idle
                await subscription.wait(min(max(delay, 0.0), self._max_idle))

    async def run_once(self) -> int:
        """One pass over everything due now; how many rows it moved.

        It waits for a pass already under way in this replica, so that once it returns,
        every row due at its start has been handled (rows another pass holds are skipped).
        """

        async def run_pass(tx: Tx) -> tuple[int, int]:
            moved = failed = 0
            now = self._clock()
            for kind in self._kinds:
                done, errors = await self._pass(tx, kind, now)
                moved += done
                failed += errors
            return moved, failed

        async with self._one_pass:
            moved, failed = await self._db.write(run_pass)
        self._failed = failed
        if failed:
            await self._count_set_aside()
        return moved

    async def _pass(self, tx: Tx, kind: _Kind, now: int) -> tuple[int, int]:
        """Handle the due rows of one kind, each on its own; (moved, failed).

        The batch is tried whole first, in one savepoint: failures are rare, and a
        savepoint per row costs two round trips each on PostgreSQL. When a row fails,
        the batch is undone and handled again row by row, each in its own savepoint,
        which confines the failure to its row. The rows stay locked throughout (taken
        before either savepoint).
        """
        due = await tx.fetch(
            f"SELECT * FROM {kind.table} WHERE {kind.due} AND {_LIVE}"
            f" ORDER BY {kind.order} LIMIT {min(self._batch, kind.batch or self._batch)}"
            f"{tx.skip_locked}",
            now,
        )
        if not due:
            return 0, 0
        try:
            async with tx.savepoint():
                return await self._handle(tx, kind, due, now), 0
        except Exception:  # found and noted below, row by row
            pass
        moved = failed = 0
        for row in due:
            try:
                async with tx.savepoint():
                    moved += await self._handle(tx, kind, [row], now)
            except Exception as exc:
                failed += 1
                await self._note_failure(tx, kind, row, exc)
        return moved, failed

    async def _handle(self, tx: Tx, kind: _Kind, rows: list[Row], now: int) -> int:
        """Handle `rows` in order; how many were still due."""
        moved = 0
        for row in rows:
            current: Row | None = row
            if kind.reread:
                # an earlier row of this pass may have moved it (a parent's deadline
                # cancels its children, an ending child requeues its parent)
                current = await tx.fetchrow(
                    f"SELECT * FROM {kind.table} WHERE id = $2 AND {kind.due}{tx.lock_rows}",
                    now,
                    row["id"],
                )
            if current is not None:
                # the time the row moved at: now that it is locked
                moved_at = self._clock()
                await kind.handle(tx, current, moved_at)
                tx.observe(partial(_moved, kind.what, moved_at - current[kind.order]))
                moved += 1
        return moved

    async def _note_failure(self, tx: Tx, kind: _Kind, row: Row, exc: Exception) -> None:
        """Count the failure on the row and log it; at `SET_ASIDE_AFTER`, it is set aside."""
        row_id = row["id"]
        error = ErrorInfo.from_exception(exc, include_stack=False)
        noted = await tx.fetchrow(
            f"UPDATE {kind.table} SET timer_failures = timer_failures + 1, timer_error = $2"
            " WHERE id = $1 RETURNING timer_failures",
            row_id,
            dump(error.model_dump(mode="json")),
        )
        failures = 0 if noted is None else int(noted["timer_failures"])
        context = {"kind": kind.what, "id": row_id, "failures": failures, "error": repr(exc)}
        if kind.table == "runs":
            context |= run_ids(row)
        if failures >= SET_ASIDE_AFTER:
            _log.error(f"{kind.what} failed {failures} times in a row; set aside", context)
        else:
            _log.error(f"{kind.what} failed; trying again in the next pass", context)

    async def _count_set_aside(self) -> None:
        # `timer_failures > 0` lets SQLite count in the partial index of failing rows
        failing = f"timer_failures > 0 AND timer_failures >= {SET_ASIDE_AFTER}"
        async with self._db.reader(off_loop=True) as tx:
            row = await tx.fetchrow(
                f"SELECT (SELECT COUNT(*) FROM runs WHERE {failing})"
                f" + (SELECT COUNT(*) FROM schedules WHERE {failing}) AS n"
            )
        self.set_aside = 0 if row is None else int(row["n"])

    async def _next_due(self) -> int | None:
        await self._count_set_aside()
        async with self._db.reader(off_loop=True) as tx:
            row = await tx.fetchrow(f"SELECT MIN(due) AS due FROM ({_NEXT_DUE}) AS dues")
        return None if row is None or row["due"] is None else int(row["due"])


def _moved(kind: str, late_ms: int, metrics: Metrics) -> None:
    """Count a row moved (a function, not a lambda: rows are moved in a loop)."""
    metrics.timer_moved(kind, late_ms)


async def _wake(tx: Tx, run: Row, now: int) -> None:
    """A due wake-up: due sleeps complete, due waits time out, the run is queued."""
    await tx.execute(
        "UPDATE sleeps SET status = 'completed', completed_at = $2"
        " WHERE run_id = $1 AND status = 'sleeping' AND wake_at <= $2",
        run["id"],
        now,
    )
    await tx.execute(
        "UPDATE event_waits SET status = 'timed_out'"
        " WHERE run_id = $1 AND status = 'waiting' AND timeout_at <= $2",
        run["id"],
        now,
    )
    reason = "start time reached" if run["status"] == RunStatus.SCHEDULED else "due"
    await requeue(tx, run, now, reason)


async def _expire(tx: Tx, run: Row, now: int) -> None:
    """A passed deadline: the run fails as timed out (a delayed start too).

    A run that ran cleans up first (for `Tx.cleanup_ms`); a cleanup past its own deadline
    ends the run. Either way its children go by their parent-close policies as it ends.
    """
    if run["status"] == RunStatus.CLEANING_UP:
        reason = "cleanup deadline passed: ended without its cleanup finished"
        await end_cleanup(tx, run, now, reason)
        return
    timeout = WorkflowTimeoutError(run["id"], int(run["timeout_ms"] or 0))
    error = ErrorInfo.from_exception(timeout)
    await end_run_and_descendants(tx, run, RunStatus.FAILED, now, "timed out", error, cleanup=True)


async def _release_idle_claim(tx: Tx, run: Row, now: int) -> None:
    """An idle claim: the run goes back to the queue (fenced), for another worker."""
    reason = f"claim of {run['claimed_by']} went idle"
    if run["status"] == RunStatus.CLEANING_UP:
        await hand_cleanup(tx, run, now, reason, worker_id=None, expires=None)
        # taken from its worker, as a running run is (`move_run`): its directives poll answers
        tx.publish(worker_topic(run["namespace"], run["claimed_by"]))
        return
    await move_run(tx, run, RunStatus.QUEUED, now, reason, fence=True)
