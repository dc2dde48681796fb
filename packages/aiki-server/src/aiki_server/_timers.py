"""The timer daemon: moves every due time forward, in batches.

One pass handles, for at most `batch` runs each:
- due wake-ups (delayed starts, sleeps, event-wait timeouts, retry back-offs, and a
  sleep awaited together with a child, which is that child wait's timeout): the run
  goes back to the queue, its due sleeps complete and due waits time out;
- passed deadlines: the run fails with `WorkflowTimeoutError`, its children are
  cancelled, and a worker holding it is fenced off;
- idle claims: a running run whose worker stopped heartbeating is re-queued
  (fenced), so another worker resumes it;
- due schedules: each starts the run of its latest occurrence (as its overlap
  policy allows) and moves on to its next one (see `_schedules`).

Rows are taken with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas share the
work. Between passes the daemon sleeps until the next due time, or until a new one
is set (the `TIMERS` topic), and at most `max_idle` seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from aiki_core import ConsoleLogger, ErrorInfo, RunStatus, WorkflowTimeoutError
from aiki_server._lifecycle import TERMINAL, end_run_and_descendants, move_run, requeue
from aiki_server._notify import TIMERS

if TYPE_CHECKING:
    from aiki_server._orchestrator import Orchestrator
    from aiki_server._storage._database import Row, Tx

_log = ConsoleLogger().child({"component": "timers"})

_WAKEABLE = tuple(
    s.value
    for s in (
        RunStatus.SCHEDULED,
        RunStatus.SLEEPING,
        RunStatus.AWAITING_EVENT,
        RunStatus.AWAITING_CHILD,  # its `wake_at` is set only by a sleep awaited beside it
        RunStatus.AWAITING_RETRY,
    )
)
_WAKEABLE_SQL = ", ".join(f"'{s}'" for s in _WAKEABLE)
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in TERMINAL)


class TimerDaemon:
    """Runs due timers until cancelled."""

    def __init__(self, orchestrator: Orchestrator, *, batch: int = 200, max_idle: float = 1.0):
        self._orch = orchestrator
        self._batch = batch
        self._max_idle = max_idle

    async def run_forever(self) -> None:
        """Pass after pass, sleeping in between until something is due.

        A failed pass (the database unreachable for a moment, say) is logged and tried
        again after `max_idle`: were the error to escape, it would end the app's
        lifespan and close the database under a server that goes on answering 500s.
        """
        while True:
            subscription = self._orch.hub.subscribe(TIMERS)
            try:
                moved = await self._orch.db.retry(self.run_once)
                if moved:
                    continue  # a full batch may mean more is due
                next_due = await self._next_due()
            except Exception as exc:
                _log.error("timer pass failed; trying again", {"error": repr(exc)})
                await anyio.sleep(self._max_idle)
                continue
            now = self._orch.clock()
            delay = self._max_idle if next_due is None else (next_due - now) / 1000
            await subscription.wait(min(max(delay, 0.0), self._max_idle))

    async def run_once(self) -> int:
        """One pass over everything due now; how many runs it moved."""
        now = self._orch.clock()
        async with self._orch.db.transaction() as tx:
            moved = await self._wake(tx, now)
            moved += await self._expire_deadlines(tx, now)
            moved += await self._release_idle_claims(tx, now)
            moved += await self._fire_schedules(tx, now)
        return moved

    async def _due(
        self, tx: Tx, condition: str, order: str, *args: object, table: str = "runs"
    ) -> list[Row]:
        return await tx.fetch(
            f"SELECT * FROM {table} WHERE {condition} ORDER BY {order}"
            f" LIMIT {self._batch}{tx.skip_locked}",
            *args,
        )

    async def _wake(self, tx: Tx, now: int) -> int:
        rows = await self._due(
            tx,
            f"wake_at <= $1 AND status IN ({_WAKEABLE_SQL})",
            "wake_at",
            now,
        )
        for run in rows:
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
        return len(rows)

    async def _expire_deadlines(self, tx: Tx, now: int) -> int:
        rows = await self._due(
            tx,
            f"deadline_at <= $1 AND status NOT IN ({_TERMINAL_SQL})",
            "deadline_at",
            now,
        )
        for run in rows:
            timeout = WorkflowTimeoutError(run["id"], int(run["timeout_ms"] or 0))
            await end_run_and_descendants(
                tx, run, RunStatus.FAILED, now, "timed out", ErrorInfo.from_exception(timeout)
            )
        return len(rows)

    async def _release_idle_claims(self, tx: Tx, now: int) -> int:
        rows = await self._due(
            tx, "claim_expires_at <= $1 AND status = 'running'", "claim_expires_at", now
        )
        for run in rows:
            await move_run(
                tx,
                run,
                RunStatus.QUEUED,
                now,
                f"claim of {run['claimed_by']} went idle",
                fence=True,
            )
        return len(rows)

    async def _fire_schedules(self, tx: Tx, now: int) -> int:
        rows = await self._due(
            tx, "paused = 0 AND next_fire_at <= $1", "next_fire_at", now, table="schedules"
        )
        for schedule in rows:
            await self._orch.schedules.fire(tx, schedule, now)
        return len(rows)

    async def _next_due(self) -> int | None:
        async with self._orch.db.reader() as tx:
            row = await tx.fetchrow(
                "SELECT MIN(due) AS due FROM ("
                f" SELECT MIN(wake_at) AS due FROM runs WHERE status IN ({_WAKEABLE_SQL})"
                " UNION ALL SELECT MIN(deadline_at) FROM runs WHERE deadline_at IS NOT NULL"
                " UNION ALL SELECT MIN(claim_expires_at) FROM runs WHERE status = 'running'"
                " UNION ALL SELECT MIN(next_fire_at) FROM schedules WHERE paused = 0"
                ") AS dues"
            )
        return None if row is None or row["due"] is None else int(row["due"])
