"""Retention: ended runs, and workers long gone, are deleted in the background.

An ended run (completed, failed, cancelled) is deleted, with every row it holds
(tasks and their attempts, history, events, sleeps and waits, webhooks, pending task
pushes), once its namespace's retention has passed since it ended (`finished_at`).
The namespace's own retention (`namespace_retention`, set through the API) wins over
the server's; `None` keeps runs forever.

Which runs go, and in which order:

- leaves first: a run that still has child runs is kept until they are gone, and a
  child whose parent has not ended is kept while the parent lives (an abandoned child
  may outlive its parent; it then goes by its own end). A child of an ended parent
  may thus go before the parent, when it ended long enough before it;
- the last run of a schedule is kept until the schedule starts another (its overlap
  policy reads it).

The daemon deletes in batches, each one short transaction of at most `batch` runs of
one namespace (fewer when they hold long histories), taken oldest end first through
the `runs_finished` index, which also lists the namespaces that have ended runs
(without reading their runs). On PostgreSQL the batch's
runs are taken with `FOR NO KEY UPDATE SKIP LOCKED`, so replicas deleting at once share the
work; on SQLite, whose statements run on the event loop, batches are smaller. Between
batches the daemon pauses, so claims and task records are never held up for long.
Workers not seen for `worker_retention` are deleted too (they hold no claim: one idle
for `claim_idle_timeout` is released long before).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING

import anyio

from aiki_core.wire import RetentionInfo, SetRetentionRequest, from_millis, to_millis
from aiki_server._clock import from_ms
from aiki_server._dry_runs import delete_expired_jobs
from aiki_server._logs import component

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiki_server._clock import Clock
    from aiki_server._storage._database import Database, Row, Tx

_log = component("retention")

_BATCH = {"postgresql": 500, "sqlite": 100}
"""Runs per deleting transaction: SQLite's run on the event loop, so fewer."""
_BUDGET = {"postgresql": 20_000, "sqlite": 5_000}
"""History rows (status moves and task calls) of the runs one transaction deletes; the
rows of their tasks, waits and events go with them."""
_PAUSE = 0.01
"""Seconds between two batches, for the server's other writes."""

_RUN_TABLES = (
    "tasks",
    "sleeps",
    "events",
    "webhooks",
    "task_pushes",
    "state_transitions",
    "dry_run_jobs",
)
"""Tables whose rows belong to one run by their `run_id` (besides those deleted first)."""


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """How long ended runs and silent workers are kept, and how often the daemon looks."""

    retention: timedelta | None = timedelta(days=30)
    """How long an ended run is kept from its end, unless its namespace says otherwise;
    `None` keeps runs forever."""
    worker_retention: timedelta = timedelta(days=1)
    """How long a worker not heard from stays listed."""
    every: timedelta = timedelta(minutes=1)
    """The pause between two sweeps (a sweep goes on, batch after batch, while full)."""

    def __post_init__(self) -> None:
        for name in ("retention", "worker_retention"):
            value = getattr(self, name)
            if value is not None and value < timedelta(0):
                raise ValueError(f"{name} must not be negative, got {value}")
        if self.every <= timedelta(0):
            raise ValueError(f"the retention sweep interval must be positive, got {self.every}")


class Retention:
    """Reads and sets namespaces' retention, and deletes what has outlived it."""

    def __init__(self, db: Database, clock: Clock, settings: RetentionSettings) -> None:
        self._db = db
        self._clock = clock
        self._settings = settings
        self._default_ms = None if settings.retention is None else to_millis(settings.retention)
        self._batch = _BATCH.get(db.dialect, _BATCH["sqlite"])
        self._budget = _BUDGET.get(db.dialect, _BUDGET["sqlite"])

    async def get(self, namespace: str) -> RetentionInfo:
        """The retention in effect for `namespace`, and where it comes from."""
        async with self._db.reader() as tx:
            row = await tx.fetchrow(
                "SELECT retention_ms, updated_at FROM namespace_retention WHERE namespace = $1",
                namespace,
            )
        if row is None:
            return RetentionInfo(
                namespace=namespace, retention=self._settings.retention, source="server"
            )
        return _namespace_info(namespace, row["retention_ms"], row["updated_at"])

    async def set(self, namespace: str, req: SetRetentionRequest) -> RetentionInfo:
        """Give `namespace` its own retention (`None`: forever), from the next sweep on."""
        retention_ms = None if req.retention is None else to_millis(req.retention)
        now = self._clock()

        async def store(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO namespace_retention (namespace, retention_ms, updated_at)"
                " VALUES ($1, $2, $3) ON CONFLICT (namespace) DO UPDATE"
                " SET retention_ms = excluded.retention_ms, updated_at = excluded.updated_at",
                namespace,
                retention_ms,
                now,
            )

        await self._db.write(store)
        return _namespace_info(namespace, retention_ms, now)

    async def clear(self, namespace: str) -> RetentionInfo:
        """Drop the namespace's own retention: the server's applies again."""

        async def drop(tx: Tx) -> None:
            await tx.execute("DELETE FROM namespace_retention WHERE namespace = $1", namespace)

        await self._db.write(drop)
        return RetentionInfo(
            namespace=namespace, retention=self._settings.retention, source="server"
        )

    async def run_forever(self) -> None:
        """Sweep, then pause `every`, until cancelled; a failed sweep is logged and retried."""
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                _log.error("retention sweep failed; trying again", {"error": repr(exc)})
            await anyio.sleep(self._settings.every.total_seconds())

    async def sweep(self) -> int:
        """Delete, batch after batch, what has outlived its retention now; the runs deleted."""
        await self._in_batches(self._delete_workers)
        await self._in_batches(self._delete_expired_dry_runs)
        deleted = 0
        for namespace, cutoff in await self._cutoffs():
            deleted += await self._delete_ended(namespace, cutoff)
        return deleted

    async def _cutoffs(self) -> list[tuple[str, int]]:
        """Each namespace with ended runs, and the end before which its runs go now.

        The namespaces are found by a loose index scan (one index probe each), so a
        batch then reads only its namespace's runs past their cutoff, however many
        runs other namespaces keep.
        """
        now = self._clock()
        async with self._db.reader() as tx:
            found = await tx.fetch(
                "WITH RECURSIVE ns (name) AS ("
                " SELECT min(namespace) FROM runs WHERE finished_at IS NOT NULL"
                " UNION ALL SELECT (SELECT min(namespace) FROM runs"
                "   WHERE finished_at IS NOT NULL AND namespace > ns.name)"
                " FROM ns WHERE ns.name IS NOT NULL"
                ") SELECT name FROM ns WHERE name IS NOT NULL"
            )
            rows = await tx.fetch("SELECT namespace, retention_ms FROM namespace_retention")
        own = {row["namespace"]: row["retention_ms"] for row in rows}
        periods = ((row["name"], own.get(row["name"], self._default_ms)) for row in found)
        return [(name, now - period) for name, period in periods if period is not None]

    async def _in_batches(self, batch: Callable[[Tx], Awaitable[tuple[int, bool]]]) -> int:
        """`batch` in transaction after transaction, while each says more is due; the count."""
        total = 0
        while True:
            count, more = await self._db.write(batch)
            total += count
            if not more:
                return total
            await anyio.sleep(_PAUSE)

    async def _delete_ended(self, namespace: str, cutoff: int) -> int:
        """The namespace's runs ended before `cutoff`, batch after batch; how many went.

        Each batch starts past the last run the one before looked at, so runs that could
        not be deleted hold up none behind them (they are tried again at the next sweep).
        """
        total = 0
        after: tuple[int, str] | None = None
        while True:
            batch = partial(self._delete_runs, namespace, cutoff, after)
            count, after = await self._db.write(batch)
            total += count
            if after is None:
                return total
            await anyio.sleep(_PAUSE)

    async def _delete_runs(
        self, namespace: str, cutoff: int, after: tuple[int, str] | None, tx: Tx
    ) -> tuple[int, tuple[int, str] | None]:
        """One batch of the namespace's runs ended before `cutoff`: (deleted, next start).

        The batch starts past `after` (the end and id of the last run an earlier batch
        looked at); the next one past its own last run, or none (`None`) is due. The oldest
        go first, with all they hold. A batch holds at most `batch` runs, of at most
        `_BUDGET` history rows in all (one run at least, of at most the server's history per
        run), so one transaction deletes a bounded number of rows: a run's history counts
        its status moves and task calls, and a run without a task call may hold a long one
        (a loop of waits). A batch that fails is undone and deleted again run by run, each
        in its own savepoint: a run that cannot be deleted is logged and left, alone.
        """
        past = "" if after is None else " AND (r.finished_at, r.id) > ($4, $5)"
        rows = await tx.fetch(
            "SELECT r.id, r.finished_at, r.task_count, r.history_count FROM runs r"
            " WHERE r.namespace = $1 AND r.finished_at IS NOT NULL AND r.finished_at < $2"
            f"{past}"
            " AND NOT EXISTS (SELECT 1 FROM runs c WHERE c.parent_run_id = r.id)"
            " AND NOT EXISTS (SELECT 1 FROM runs p"
            "   WHERE p.id = r.parent_run_id AND p.finished_at IS NULL)"
            " AND NOT EXISTS (SELECT 1 FROM schedules s WHERE s.last_run_id = r.id)"
            f" ORDER BY r.finished_at, r.id LIMIT $3{tx.skip_locked}",
            namespace,
            cutoff,
            self._batch,
            *(after or ()),
        )
        chosen: list[Row] = []
        held = 0
        for row in rows:
            # a run older than the count holds at least its task calls
            held += max(int(row["task_count"]), int(row["history_count"]))
            if chosen and held > self._budget:
                break
            chosen.append(row)
        if not chosen:
            return 0, None
        ids = [row["id"] for row in chosen]
        try:
            async with tx.savepoint():
                count = await _purge(tx, ids)
        except Exception:  # found and logged below, run by run
            count = 0
            for run_id in ids:
                try:
                    async with tx.savepoint():
                        count += await _purge(tx, [run_id])
                except Exception as exc:
                    _log.error(
                        "ended run could not be deleted; tried again at the next sweep",
                        {"run_id": run_id, "error": repr(exc)},
                    )
        tx.observe(lambda metrics: metrics.retention_deleted("runs", count))
        # a run taken by another replica meanwhile is skipped, not counted: look again
        if len(rows) < self._batch and len(chosen) == len(rows):
            return count, None
        last = chosen[-1]
        return count, (int(last["finished_at"]), str(last["id"]))

    async def _delete_workers(self, tx: Tx) -> tuple[int, bool]:
        """One batch of workers not heard from for `worker_retention`."""
        cutoff = self._clock() - to_millis(self._settings.worker_retention)
        count = await tx.execute(
            "DELETE FROM workers WHERE (namespace, id) IN (SELECT namespace, id FROM workers"
            f" WHERE last_seen_at < $1 ORDER BY last_seen_at LIMIT $2{tx.skip_locked})",
            cutoff,
            self._batch,
        )
        tx.observe(lambda metrics: metrics.retention_deleted("workers", count))
        return count, count == self._batch

    async def _delete_expired_dry_runs(self, tx: Tx) -> tuple[int, bool]:
        """One batch of dry-run jobs whose request died before it answered (and deleted them)."""
        count = await delete_expired_jobs(tx, self._clock(), self._batch)
        return count, count == self._batch


async def _purge(tx: Tx, run_ids: list[str]) -> int:
    """Delete the runs and every row they hold; how many runs there were."""
    ids = tx.array(run_ids)
    ours = tx.in_array(1)
    await tx.execute(
        f"DELETE FROM task_attempts WHERE task_id IN (SELECT id FROM tasks WHERE run_id {ours})",
        ids,
    )
    # event waits point at events, and child waits of a parent at its children
    await tx.execute(f"DELETE FROM event_waits WHERE run_id {ours}", ids)
    await tx.execute(f"DELETE FROM child_waits WHERE run_id {ours}", ids)
    await tx.execute(f"DELETE FROM child_waits WHERE child_run_id {ours}", ids)
    for table in _RUN_TABLES:
        await tx.execute(f"DELETE FROM {table} WHERE run_id {ours}", ids)
    return await tx.execute(f"DELETE FROM runs WHERE id {ours}", ids)


def _namespace_info(namespace: str, retention_ms: int | None, updated_at: int) -> RetentionInfo:
    return RetentionInfo(
        namespace=namespace,
        retention=None if retention_ms is None else from_millis(retention_ms),
        source="namespace",
        updated_at=from_ms(updated_at),
    )
