"""Runs as clients see them: one transaction for each operation.

Start, read, list, wait for, cancel, pause, resume, wake and migrate runs, and send them
events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiki_core import (
    ConflictError,
    IllegalTransitionError,
    NotFoundError,
    RunRecordLimitError,
    RunStatus,
)
from aiki_core.wire import (
    RUN_WAITING_STATUSES,
    RunDetail,
    RunPage,
    SendEventResponse,
    StartRunResponse,
    to_millis,
)
from aiki_server._clock import from_ms, to_ms
from aiki_server._endpoints import list_endpoints
from aiki_server._flow import waiting_reason
from aiki_server._lifecycle import (
    TERMINAL,
    cancel_run_and_descendants,
    end_wait,
    locked_run,
    move_run,
    read_summary,
    record_history,
)
from aiki_server._notify import run_topic, worker_topic
from aiki_server._replay import replay_parts
from aiki_server._rows import (
    RUN_COLUMNS,
    decode_cursor,
    dump,
    encode_cursor,
    new_id,
    run_detail,
    run_outcome,
    run_summary,
    transition,
)
from aiki_server._starts import start_fingerprint, start_run_in
from aiki_server._versions import (
    TRIPLE_KEY_SQL,
    UNSERVED_STATUSES,
    migrate_runs,
    served_triples,
    triple_key,
    unserved_reason,
    worker_triples,
)
from aiki_server._waits import deliver_event, task_waits

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import timedelta

    from aiki_core.wire import (
        EventOrigin,
        ListRunsQuery,
        MigrateRunsRequest,
        MigrateRunsResponse,
        RunOutcome,
        RunSummary,
        SendEventRequest,
        StartRunRequest,
    )
    from aiki_server._clock import Clock
    from aiki_server._endpoints import Endpoint
    from aiki_server._limits import Limits
    from aiki_server._notify import WakeHub
    from aiki_server._storage._database import Database, Row, Tx

_WAITING = frozenset(s.value for s in RUN_WAITING_STATUSES)


async def _awaited_tasks(tx: Tx, run_id: str) -> str | None:
    """What a run `awaiting_task` waits for: each long remote attempt, and where it runs."""
    rows = await tx.fetch(
        "SELECT p.task_name, p.attempt, e.url FROM task_pushes p"
        " LEFT JOIN endpoints e ON e.id = p.endpoint_id WHERE p.run_id = $1"
        " ORDER BY p.created_at",
        run_id,
    )
    said = [
        f"waiting for task {r['task_name']!r} (attempt {r['attempt']}) on endpoint"
        f" {r['url'] or 'deleted'}"
        for r in rows
    ]
    return "; ".join(said) or None


class Runs:
    """The client's operations on runs."""

    def __init__(self, db: Database, hub: WakeHub, clock: Clock, limits: Limits) -> None:
        self._db = db
        self._hub = hub
        self._clock = clock
        self._limits = limits

    async def start_run(self, namespace: str, req: StartRunRequest) -> StartRunResponse:
        """Create a run, or return the one its reference id already started."""
        fingerprint = start_fingerprint(req)  # hashed before the write lock is taken
        self._limits.dump_payload(req.input, "input")  # refused before any write
        return await self._db.write(
            lambda tx: start_run_in(tx, namespace, req, self._clock(), fingerprint=fingerprint)
        )

    async def get_run(self, namespace: str, run_id: str) -> RunDetail:
        """The run with everything it recorded and its history."""
        async with self._db.reader(off_loop=True) as tx:
            row = await tx.fetchrow(
                "SELECT * FROM runs WHERE id = $1 AND namespace = $2", run_id, namespace
            )
            if row is None:
                raise NotFoundError("run", run_id)
            parts = await replay_parts(tx, [run_id])
            history = await tx.fetch(
                "SELECT * FROM state_transitions WHERE run_id = $1 ORDER BY seq", run_id
            )
            pending = None
            if row["status"] == RunStatus.QUEUED:
                pending = await self._pending_reason(tx, row)
            elif row["status"] in UNSERVED_STATUSES:
                said = [await _awaited_tasks(tx, run_id)] if task_waits(row) else []
                # `awaiting_task`, or a sleep (say) beside the task; then who runs it next
                said.append(await self._unserved(tx, row))
                pending = "; ".join(s for s in said if s) or None
        return run_detail(
            row,
            **parts[run_id],
            history=[transition(h, seq) for seq, h in enumerate(history, start=1)],
            pending_reason=pending,
        )

    async def _pending_reason(self, tx: Tx, run: Row) -> str | None:
        held_back = await waiting_reason(tx, run)
        if held_back is not None:
            return held_back
        triple = (run["workflow"], run["version"], run["pool"])
        endpoints = await list_endpoints(tx, "workflows", run["namespace"])
        serving = [e for e in endpoints if triple in e.workflows]
        if serving:  # pushed to one that is not failing, else waits for one to recover
            failing = [e for e in serving if e.failures]
            return None if len(failing) < len(serving) else _failing(failing[0])
        if triple in await worker_triples(tx, run["namespace"], self._live_since()):
            return None
        return unserved_reason(run)

    async def _unserved(self, tx: Tx, run: Row) -> str | None:
        """Why a suspended (or paused) run will find no worker when it is next due."""
        triple = (run["workflow"], run["version"], run["pool"])
        if triple in await served_triples(tx, run["namespace"], self._live_since()):
            return None
        return unserved_reason(run)

    def _live_since(self) -> int:
        """Workers seen since then are live (within one claim idle timeout)."""
        return self._clock() - self._limits.claim_idle_ms

    async def migrate_runs(self, namespace: str, req: MigrateRunsRequest) -> MigrateRunsResponse:
        """Move in-flight runs of a workflow to another version (see `_versions`)."""
        return await self._db.write(
            lambda tx: migrate_runs(tx, namespace, req, self._clock(), self._live_since())
        )

    async def list_runs(self, namespace: str, query: ListRunsQuery) -> RunPage:
        """Runs newest first, filtered, one keyset page at a time."""
        async with self._db.reader(off_loop=True) as tx:
            where = await self._filter(tx, namespace, query)
            if query.cursor is not None:
                created_at, run_id = decode_cursor(query.cursor)
                where.add(
                    f"(created_at < {where.arg(created_at)} OR (created_at ="
                    f" {where.arg(created_at)} AND id < {where.arg(run_id)}))"
                )
            sql = (
                f"SELECT {RUN_COLUMNS} FROM runs WHERE {where.sql}"
                f" ORDER BY created_at DESC, id DESC LIMIT {where.arg(query.limit + 1)}"
            )
            rows = await tx.fetch(sql, *where.args)
        page = rows[: query.limit]
        next_cursor = None
        if len(rows) > query.limit:
            last = page[-1]
            next_cursor = encode_cursor(last["created_at"], last["id"])
        return RunPage(runs=[run_summary(r) for r in page], next_cursor=next_cursor)

    async def count_by_status(self, namespace: str, query: ListRunsQuery) -> dict[RunStatus, int]:
        """How many runs `list_runs` finds under the query's filters, by status.

        Every status is counted whatever `query.status` says (a tally to pick one
        from); the cursor and the limit do not apply.
        """
        async with self._db.reader(off_loop=True) as tx:
            where = await self._filter(tx, namespace, query.model_copy(update={"status": None}))
            sql = f"SELECT status, COUNT(*) AS n FROM runs WHERE {where.sql} GROUP BY status"
            rows = await tx.fetch(sql, *where.args)
        counts = dict.fromkeys(RunStatus, 0)
        for row in rows:
            counts[RunStatus(row["status"])] = int(row["n"])
        return counts

    async def _filter(self, tx: Tx, namespace: str, query: ListRunsQuery) -> _RunFilter:
        """The query's filters; `unserved` reads what is served now, in `tx`."""
        where = _RunFilter(namespace, query)
        if query.unserved:
            statuses = tx.array(sorted(s.value for s in UNSERVED_STATUSES))
            where.add(f"status {tx.in_array(len(where.args) + 1)}")
            where.args.append(statuses)
            served = await served_triples(tx, namespace, self._live_since())
            keys = tx.array(sorted(triple_key(*t) for t in served))
            where.add(f"NOT ({TRIPLE_KEY_SQL} {tx.in_array(len(where.args) + 1)})")
            where.args.append(keys)
        return where

    async def wait_for_run(
        self, namespace: str, run_id: str, statuses: Sequence[RunStatus], timeout: timedelta
    ) -> RunOutcome:
        """Long-poll until the run is in one of `statuses` or `timeout` passes; the run then."""
        wanted = {s.value for s in statuses} or set(TERMINAL)
        deadline = self._clock() + to_millis(timeout)
        while True:
            # the run's own topic alone: a replica's NOTIFY lost while its LISTEN
            # connection was down is made up for by waking every waiter on reconnect
            with self._hub.subscribe(run_topic(run_id)) as subscription:
                async with self._db.reader() as tx:
                    row = await tx.fetchrow(
                        f"SELECT {RUN_COLUMNS}, result, error FROM runs"
                        " WHERE id = $1 AND namespace = $2",
                        run_id,
                        namespace,
                    )
                if row is None:
                    raise NotFoundError("run", run_id)
                remaining = deadline - self._clock()
                if row["status"] in wanted or remaining <= 0:
                    return run_outcome(row)
                await subscription.wait(remaining / 1000)

    async def cancel_run(self, namespace: str, run_id: str, reason: str | None) -> RunSummary:
        """End the run as cancelled; its live children go by their parent-close policies.

        A run that ran cleans up first (`cleaning_up`); one cleaning up ends at once.
        """

        async def cancel(tx: Tx) -> RunSummary:
            run = await locked_run(tx, run_id, namespace)
            now = self._clock()
            await cancel_run_and_descendants(tx, run, now, reason, cleanup=True)
            return await read_summary(tx, run_id)

        return await self._db.write(cancel)

    async def pause_run(self, namespace: str, run_id: str) -> RunSummary:
        """Hold the run; a running one at its next task boundary.

        A running run keeps its claim: its worker lets the task in flight finish and
        be recorded, and stops before the next task starts (or when the run would
        suspend); the run becomes `paused` as its worker lets it go (`move_run`).
        """

        async def pause(tx: Tx) -> RunSummary:
            run = await locked_run(tx, run_id, namespace)
            now = self._clock()
            if run["status"] != RunStatus.RUNNING:
                await move_run(tx, run, RunStatus.PAUSED, now, "paused", fence=True)
            elif not run["pause_requested"]:
                reason = "pause requested: the run stops at its next task boundary"
                await _request_pause(tx, run, now, reason, requested=True)
            return await read_summary(tx, run_id)

        return await self._db.write(pause)

    async def resume_run(self, namespace: str, run_id: str) -> RunSummary:
        """Release a paused run: back to its delayed start, or to the queue to replay."""

        async def resume(tx: Tx) -> RunSummary:
            run = await locked_run(tx, run_id, namespace)
            now = self._clock()
            if run["status"] == RunStatus.RUNNING and run["pause_requested"]:
                # resumed before its worker reached the boundary: it goes on running
                await _request_pause(tx, run, now, "pause withdrawn", requested=False)
                return await read_summary(tx, run_id)
            if run["status"] != RunStatus.PAUSED:
                # the state machine allows e.g. running -> queued, but not as a "resume"
                raise IllegalTransitionError("run", run_id, run["status"], "resumed")
            start_at = run["start_at"]
            retry_at = run["wake_at"]  # a retry back-off a pause kept (see `_lifecycle`)
            if start_at is not None and start_at > now:
                await move_run(tx, run, RunStatus.SCHEDULED, now, "resumed", wake_at=start_at)
            elif retry_at is not None and retry_at > now:
                await move_run(
                    tx,
                    run,
                    RunStatus.AWAITING_RETRY,
                    now,
                    "resumed; its retry is not due yet",
                    wake_at=retry_at,
                    waits=dump([{"kind": "retry", "due_at": retry_at}]),
                )
            else:
                await move_run(tx, run, RunStatus.QUEUED, now, "resumed")
            return await read_summary(tx, run_id)

        return await self._db.write(resume)

    async def wake_run(self, namespace: str, run_id: str) -> RunSummary:
        """End the pending sleeps of a suspended run early and queue it.

        Whatever its status says: a run racing a sleep against an event is woken too.
        A run with no pending sleep cannot be woken (`IllegalTransitionError`).
        """

        async def wake(tx: Tx) -> RunSummary:
            run = await locked_run(tx, run_id, namespace)
            now = self._clock()
            if run["status"] not in _WAITING:  # waits are live only while it is suspended
                raise IllegalTransitionError("run", run_id, run["status"], "woken")
            woken = await tx.execute(
                "UPDATE sleeps SET status = 'woken', completed_at = $2"
                " WHERE run_id = $1 AND status = 'sleeping'",
                run_id,
                now,
            )
            if not woken:
                raise IllegalTransitionError("run", run_id, run["status"], "woken")
            await end_wait(tx, run, now, "woken")
            return await read_summary(tx, run_id)

        return await self._db.write(wake)

    async def send_event(
        self,
        namespace: str,
        run_id: str,
        req: SendEventRequest,
        origin: EventOrigin = "api",
    ) -> SendEventResponse:
        """Store an event for the run (once per reference id) and hand it to a waiting wait."""

        async def send(tx: Tx) -> SendEventResponse:
            run = await locked_run(tx, run_id, namespace)
            now = self._clock()
            if run["status"] in TERMINAL:
                raise ConflictError(
                    f"run {run_id} has ended ({run['status']}); it takes no more events",
                    details={"run_id": run_id, "status": run["status"]},
                )
            if req.reference_id is not None:
                seen = await tx.fetchrow(
                    "SELECT id FROM events WHERE run_id = $1 AND name = $2 AND reference_id = $3",
                    run_id,
                    req.name,
                    req.reference_id,
                )
                if seen is not None:
                    return SendEventResponse(event_id=seen["id"], duplicate=True)
            await self._check_event_room(tx, run_id)
            event_id = new_id()
            await tx.execute(
                "INSERT INTO events"
                " (id, run_id, name, reference_id, data, origin, received_at, consumed)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
                event_id,
                run_id,
                req.name,
                req.reference_id,
                self._limits.dump_payload(req.data, "data"),
                origin,
                now,
            )
            wait = await tx.fetchrow(
                "SELECT occurrence FROM event_waits WHERE run_id = $1 AND name = $2"
                " AND status = 'waiting' ORDER BY occurrence LIMIT 1",
                run_id,
                req.name,
            )
            if wait is not None:  # a live wait: the run is suspended on it
                await deliver_event(tx, run_id, req.name, wait["occurrence"], event_id)
                await end_wait(tx, run, now, f"event {req.name!r} received")
            return SendEventResponse(event_id=event_id, duplicate=False)

        return await self._db.write(send)

    async def _check_event_room(self, tx: Tx, run_id: str) -> None:
        """`RunRecordLimitError` when the run holds `max_events_per_run` events already.

        Counted through the run's events index, and no further than the limit. The run
        is locked, so two sends cannot both take the last place.
        """
        limit = self._limits.max_events_per_run
        held = await tx.fetchrow(
            "SELECT count(*) AS n FROM (SELECT 1 FROM events WHERE run_id = $1 LIMIT $2) AS e",
            run_id,
            limit,
        )
        if held is not None and held["n"] >= limit:
            raise RunRecordLimitError(run_id, "events", limit)


async def _request_pause(tx: Tx, run: Row, now: int, reason: str, *, requested: bool) -> None:
    """Ask a running run to stop at its next task boundary, or withdraw that; in history."""
    await tx.execute(
        "UPDATE runs SET pause_requested = $2, updated_at = $3 WHERE id = $1",
        run["id"],
        int(requested),
        now,
    )
    await record_history(
        tx,
        namespace=run["namespace"],
        run_id=run["id"],
        entity="run",
        entity_id=run["id"],
        from_status=run["status"],
        to_status=run["status"],
        reason=reason,
        revision=run["revision"],
        now=now,
    )
    tx.publish(run_topic(run["id"]))
    if run["claimed_by"]:
        tx.publish(worker_topic(run["namespace"], run["claimed_by"]))


def _failing(endpoint: Endpoint) -> str:
    """Why a run only a failing endpoint serves waits."""
    since = ""
    if endpoint.failing_since is not None:
        since = f" since {from_ms(endpoint.failing_since):%Y-%m-%d %H:%M:%S} UTC"
    return (
        f"endpoint {endpoint.url} failing: {endpoint.last_error}{since}; the run stays"
        " queued until a push to it succeeds"
    )


class _RunFilter:
    """The WHERE clause of a run listing's filters, with its numbered arguments."""

    def __init__(self, namespace: str, query: ListRunsQuery) -> None:
        self.args: list[Any] = [namespace]
        self._clauses = ["namespace = $1"]
        if query.workflow is not None:
            self.add(f"workflow = {self.arg(query.workflow)}")
        if query.version is not None:
            self.add(f"version = {self.arg(query.version)}")
        if query.status:
            self.add(f"status IN ({', '.join(self.arg(s.value) for s in query.status)})")
        if query.reference_id is not None:
            self.add(f"reference_id = {self.arg(query.reference_id)}")
        if query.concurrency_key is not None:
            self.add(f"concurrency_key = {self.arg(query.concurrency_key)}")
        if query.created_after is not None:
            self.add(f"created_at >= {self.arg(to_ms(query.created_after))}")
        if query.created_before is not None:
            self.add(f"created_at < {self.arg(to_ms(query.created_before))}")

    def arg(self, value: Any) -> str:
        """The placeholder of one more argument."""
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, clause: str) -> None:
        """One more condition, ANDed with the others."""
        self._clauses.append(clause)

    @property
    def sql(self) -> str:
        """The conditions, for after `WHERE`."""
        return " AND ".join(self._clauses)
