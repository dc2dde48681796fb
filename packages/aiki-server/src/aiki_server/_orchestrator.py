"""The orchestrator: every operation of the HTTP API, as one transaction each.

Client operations start, read, list, wait for, cancel, pause, resume and wake runs,
and deliver events. Worker operations claim runs, heartbeat, record task attempts,
start children, store webhooks and transition the runs they hold; each carries the revision its
claim returned, and a stale one is rejected before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ulid import ULID

from aiki_core import (
    RUN_WAITING_STATUSES,
    AwaitChild,
    AwaitEvent,
    AwaitRetry,
    AwaitSleep,
    ClaimedRun,
    ClaimRequest,
    CompleteRun,
    ConflictError,
    ConsoleLogger,
    ContinueRun,
    CreateWebhookRequest,
    ErrorInfo,
    FailRun,
    HeartbeatRequest,
    HeartbeatResponse,
    IllegalTransitionError,
    ListRunsQuery,
    NotFoundError,
    RecordTaskRequest,
    RecordTaskResponse,
    ReferenceIdConflictError,
    ReleaseRun,
    RunDetail,
    RunDirective,
    RunLeaseStatus,
    RunLimitError,
    RunOutcome,
    RunPage,
    RunStatus,
    RunSummary,
    RunWait,
    SendEventRequest,
    SendEventResponse,
    StaleRevisionError,
    StartChildRequest,
    StartRunRequest,
    StartRunResponse,
    SuspendRun,
    TaskStatus,
    TransitionRunRequest,
    check_task_transition,
    content_hash,
    to_millis,
)
from aiki_server._clock import MAX_MS, Clock, to_ms
from aiki_server._lifecycle import (
    TERMINAL,
    cancel_run_and_descendants,
    end_wait,
    lock_run,
    move_run,
    record_history,
    requeue,
    withdraw_waits,
)
from aiki_server._notify import QUEUE, TIMERS, WakeHub, run_topic
from aiki_server._rows import (
    RUN_COLUMNS,
    child_record,
    decode_cursor,
    dump,
    encode_cursor,
    event_record,
    event_wait_record,
    run_detail,
    run_outcome,
    run_summary,
    sleep_record,
    task_record,
    transition,
)
from aiki_server._schedules import Schedules
from aiki_server._storage._outage import is_outage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Sequence

    from pydantic import JsonValue

    from aiki_core import EventOrigin
    from aiki_server._storage._database import Database, Row, Tx

_WAIT_STATUS_BY_KIND = {
    "child": RunStatus.AWAITING_CHILD,
    "event": RunStatus.AWAITING_EVENT,
    "sleep": RunStatus.SLEEPING,
    "retry": RunStatus.AWAITING_RETRY,
}
_WAITING = frozenset(s.value for s in RUN_WAITING_STATUSES)
_WAIT_PRIORITY = ("child", "sleep", "event", "retry")
"""The status of a run suspended on several kinds of wait says the first kind here.

A pending sleep makes a run `sleeping` (which `wake` ends) unless it awaits a child,
whose sleep beside it is most often that wait's timeout."""
_MAX_WORKERS_NOTED = 10_000
_MAX_CLAIM_FAILURES = 3
"""Claims of one run that fail in a row before the run is failed with the cause."""

_log = ConsoleLogger().child({"component": "orchestrator"})


@dataclass(frozen=True, slots=True)
class Limits:
    """Operational settings the orchestrator enforces."""

    claim_idle_timeout: timedelta = timedelta(seconds=90)
    """A claim not refreshed for this long is released to the queue."""
    max_tasks_per_run: int = 10_000
    """Task calls one run may record; the next one fails the run with `RunLimitError`."""


def _new_id() -> str:
    return str(ULID())


def _in_list(first: int, count: int) -> str:
    """The parameters of one row's columns (never one per row of a list: see `Tx.in_array`)."""
    return ", ".join(f"${i}" for i in range(first, first + count))


class Orchestrator:
    """All state changes of runs, over one `Database`."""

    def __init__(self, db: Database, hub: WakeHub, clock: Clock, limits: Limits) -> None:
        self.db = db
        self.hub = hub
        self.clock = clock
        self.limits = limits
        self.schedules = Schedules(self)
        self._workers_noted: dict[tuple[str, str], tuple[list[tuple[str, str, str]], int]] = {}
        """(namespace, worker id) -> the triples last written for it, and when."""

    @property
    def _idle_ms(self) -> int:
        return to_millis(self.limits.claim_idle_timeout)

    # -- client operations ---------------------------------------------------------------

    async def start_run(self, namespace: str, req: StartRunRequest) -> StartRunResponse:
        """Create a run, or return the one its reference id already started."""
        fingerprint = _fingerprint(req)  # hashed before the write lock is taken
        async with self.db.transaction() as tx:
            now = self.clock()
            return await self.start_in(tx, namespace, req, now, fingerprint=fingerprint)

    async def start_in(
        self,
        tx: Tx,
        namespace: str,
        req: StartRunRequest,
        now: int,
        *,
        fingerprint: str | None = None,
        schedule_id: str | None = None,
    ) -> StartRunResponse:
        """`start_run` inside the caller's transaction (a schedule firing, say)."""
        fingerprint = fingerprint or _fingerprint(req)
        if req.reference_id is not None:
            existing = await tx.fetchrow(
                "SELECT * FROM runs WHERE namespace = $1 AND workflow = $2 AND reference_id = $3",
                namespace,
                req.workflow,
                req.reference_id,
            )
            if existing is not None:
                if existing["input_hash"] != fingerprint:
                    raise ReferenceIdConflictError(req.reference_id, existing["id"])
                return StartRunResponse(run=run_summary(existing), created=False)
        row = await self._insert_run(
            tx,
            namespace=namespace,
            workflow=req.workflow,
            version=req.version,
            pool=req.pool,
            input_json=dump(req.input),
            fingerprint=fingerprint,
            reference_id=req.reference_id,
            start_at=_start_time(req, now),
            timeout_ms=None if req.timeout is None else to_millis(req.timeout),
            now=now,
            run_id=req.run_id,
            schedule_id=schedule_id,
        )
        return StartRunResponse(run=run_summary(row), created=True)

    async def _insert_run(
        self,
        tx: Tx,
        *,
        namespace: str,
        workflow: str,
        version: str,
        pool: str,
        input_json: str,
        fingerprint: str,
        reference_id: str | None,
        start_at: int | None,
        timeout_ms: int | None,
        now: int,
        run_id: str | None = None,
        parent: tuple[str, str, int] | None = None,
        schedule_id: str | None = None,
        continued_from: str | None = None,
    ) -> Row:
        delayed = start_at is not None and start_at > now
        status = RunStatus.SCHEDULED if delayed else RunStatus.QUEUED
        # a deadline past the year 9999 (a late start plus a long timeout) is never in
        # effect: it is the last millisecond of 9999, the latest time the wire can show
        deadline = (
            None if timeout_ms is None else min(max(start_at or now, now) + timeout_ms, MAX_MS)
        )
        if run_id is None:
            run_id = _new_id()
        elif await tx.fetchrow("SELECT id FROM runs WHERE id = $1", run_id) is not None:
            raise ConflictError(f"a run with id {run_id} exists", details={"run_id": run_id})
        parent_id, child_address, child_occurrence = parent or (None, None, None)
        values: dict[str, Any] = {
            "id": run_id,
            "namespace": namespace,
            "workflow": workflow,
            "version": version,
            "pool": pool,
            "status": status.value,
            "revision": 0,
            "attempt": 1,
            "reference_id": reference_id,
            "input_hash": fingerprint,
            "parent_run_id": parent_id,
            "child_address": child_address,
            "child_occurrence": child_occurrence,
            "schedule_id": schedule_id,
            "input": input_json,
            "timeout_ms": timeout_ms,
            "created_at": now,
            "updated_at": now,
            "ready_at": now,
            "start_at": start_at if delayed else None,
            "deadline_at": deadline,
            "wake_at": start_at if delayed else None,
            "finished_at": None,
            "pause_requested": 0,
            "claimed_by": None,
            "claim_expires_at": None,
            "result": None,
            "error": None,
            "continued_as": None,
            "continued_from": continued_from,
        }
        await tx.execute(
            f"INSERT INTO runs ({', '.join(values)}) VALUES ({_in_list(1, len(values))})",
            *values.values(),
        )
        await record_history(
            tx,
            namespace=namespace,
            run_id=run_id,
            entity="run",
            entity_id=run_id,
            from_status=None,
            to_status=status.value,
            reason="started",
            revision=0,
            now=now,
        )
        tx.publish(QUEUE if status is RunStatus.QUEUED else TIMERS)
        if deadline is not None:
            tx.publish(TIMERS)
        return values

    async def get_run(self, namespace: str, run_id: str) -> RunDetail:
        """The run with everything it recorded and its history."""
        async with self.db.reader() as tx:
            row = await tx.fetchrow(
                "SELECT * FROM runs WHERE id = $1 AND namespace = $2", run_id, namespace
            )
            if row is None:
                raise NotFoundError("run", run_id)
            parts = await _replay_parts(tx, [run_id])
            history = await tx.fetch(
                "SELECT * FROM state_transitions WHERE run_id = $1 ORDER BY seq", run_id
            )
            pending = None
            if row["status"] == RunStatus.QUEUED:
                pending = await self._pending_reason(tx, row)
        return run_detail(
            row,
            **parts[run_id],
            history=[transition(h, seq) for seq, h in enumerate(history, start=1)],
            pending_reason=pending,
        )

    async def _pending_reason(self, tx: Tx, run: Row) -> str | None:
        live_since = self.clock() - self._idle_ms
        workers = await tx.fetch(
            "SELECT capabilities FROM workers WHERE namespace = $1 AND last_seen_at >= $2",
            run["namespace"],
            live_since,
        )
        wanted = [run["workflow"], run["version"], run["pool"]]
        for worker in workers:
            if wanted in json.loads(worker["capabilities"]):
                return None
        return (
            f"no connected worker serves workflow {run['workflow']!r} version"
            f" {run['version']!r} in pool {run['pool']!r}; the run stays queued until one does"
        )

    async def list_runs(self, namespace: str, query: ListRunsQuery) -> RunPage:
        """Runs newest first, filtered, one keyset page at a time."""
        clauses = ["namespace = $1"]
        args: list[Any] = [namespace]

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.workflow is not None:
            clauses.append(f"workflow = {arg(query.workflow)}")
        if query.version is not None:
            clauses.append(f"version = {arg(query.version)}")
        if query.status:
            clauses.append(f"status IN ({', '.join(arg(s.value) for s in query.status)})")
        if query.created_after is not None:
            clauses.append(f"created_at >= {arg(to_ms(query.created_after))}")
        if query.created_before is not None:
            clauses.append(f"created_at < {arg(to_ms(query.created_before))}")
        if query.cursor is not None:
            created_at, run_id = decode_cursor(query.cursor)
            clauses.append(
                f"(created_at < {arg(created_at)} OR (created_at = {arg(created_at)}"
                f" AND id < {arg(run_id)}))"
            )
        sql = (
            f"SELECT {RUN_COLUMNS} FROM runs WHERE {' AND '.join(clauses)}"
            f" ORDER BY created_at DESC, id DESC LIMIT {arg(query.limit + 1)}"
        )
        async with self.db.reader() as tx:
            rows = await tx.fetch(sql, *args)
        page = rows[: query.limit]
        next_cursor = None
        if len(rows) > query.limit:
            last = page[-1]
            next_cursor = encode_cursor(last["created_at"], last["id"])
        return RunPage(runs=[run_summary(r) for r in page], next_cursor=next_cursor)

    async def wait_for_run(
        self, namespace: str, run_id: str, statuses: Sequence[RunStatus], timeout: timedelta
    ) -> RunOutcome:
        """Long-poll until the run is in one of `statuses` or `timeout` passes; the run then."""
        wanted = {s.value for s in statuses} or set(TERMINAL)
        deadline = self.clock() + to_millis(timeout)
        while True:
            subscription = self.hub.subscribe(run_topic(run_id))
            async with self.db.reader() as tx:
                row = await tx.fetchrow(
                    f"SELECT {RUN_COLUMNS}, result, error FROM runs"
                    " WHERE id = $1 AND namespace = $2",
                    run_id,
                    namespace,
                )
            if row is None:
                raise NotFoundError("run", run_id)
            remaining = deadline - self.clock()
            if row["status"] in wanted or remaining <= 0:
                return run_outcome(row)
            # re-check at least every second: a replica's NOTIFY may be lost on reconnect
            await subscription.wait(min(remaining, 1000) / 1000)

    async def cancel_run(self, namespace: str, run_id: str, reason: str | None) -> RunSummary:
        """End the run as cancelled, with every live descendant."""
        async with self.db.transaction() as tx:
            run = await self._locked_run(tx, run_id, namespace)
            now = self.clock()
            await cancel_run_and_descendants(tx, run, now, reason)
            return await self._summary(tx, run_id)

    async def pause_run(self, namespace: str, run_id: str) -> RunSummary:
        """Hold the run; a running one at its next task boundary.

        A running run keeps its claim: its worker lets the task in flight finish and
        be recorded, and stops before the next task starts (or when the run would
        suspend); the run becomes `paused` as its worker lets it go (`move_run`).
        """
        async with self.db.transaction() as tx:
            run = await self._locked_run(tx, run_id, namespace)
            now = self.clock()
            if run["status"] != RunStatus.RUNNING:
                await move_run(tx, run, RunStatus.PAUSED, now, "paused", fence=True)
            elif not run["pause_requested"]:
                reason = "pause requested: the run stops at its next task boundary"
                await _request_pause(tx, run, now, reason, requested=True)
            return await self._summary(tx, run_id)

    async def resume_run(self, namespace: str, run_id: str) -> RunSummary:
        """Release a paused run: back to its delayed start, or to the queue to replay."""
        async with self.db.transaction() as tx:
            run = await self._locked_run(tx, run_id, namespace)
            now = self.clock()
            if run["status"] == RunStatus.RUNNING and run["pause_requested"]:
                # resumed before its worker reached the boundary: it goes on running
                await _request_pause(tx, run, now, "pause withdrawn", requested=False)
                return await self._summary(tx, run_id)
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
            return await self._summary(tx, run_id)

    async def wake_run(self, namespace: str, run_id: str) -> RunSummary:
        """End the pending sleeps of a suspended run early and queue it.

        Whatever its status says: a run racing a sleep against an event is woken too.
        A run with no pending sleep cannot be woken (`IllegalTransitionError`).
        """
        async with self.db.transaction() as tx:
            run = await self._locked_run(tx, run_id, namespace)
            now = self.clock()
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
            return await self._summary(tx, run_id)

    async def send_event(
        self,
        namespace: str,
        run_id: str,
        req: SendEventRequest,
        origin: EventOrigin = "api",
    ) -> SendEventResponse:
        """Store an event for the run (once per reference id) and hand it to a waiting wait."""
        async with self.db.transaction() as tx:
            run = await self._locked_run(tx, run_id, namespace)
            now = self.clock()
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
            event_id = _new_id()
            await tx.execute(
                "INSERT INTO events"
                " (id, run_id, name, reference_id, data, origin, received_at, consumed)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
                event_id,
                run_id,
                req.name,
                req.reference_id,
                dump(req.data),
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
                await _deliver_event(tx, run_id, req.name, wait["occurrence"], event_id)
                await end_wait(tx, run, now, f"event {req.name!r} received")
        return SendEventResponse(event_id=event_id, duplicate=False)

    async def find_webhook(self, webhook_id: str) -> Row | None:
        """A stored webhook (in any namespace: its signed URL is the credential), or `None`."""
        async with self.db.reader() as tx:
            webhook: Row | None = await tx.fetchrow(
                "SELECT * FROM webhooks WHERE id = $1", webhook_id
            )
        return webhook

    # -- worker operations ---------------------------------------------------------------

    async def create_webhook(self, namespace: str, run_id: str, req: CreateWebhookRequest) -> Row:
        """Store a webhook for an event of a claimed run; its row."""
        async with self.db.transaction() as tx:
            await self._claimed_run(tx, run_id, namespace, req.revision)
            now = self.clock()
            values: dict[str, Any] = {
                "id": _new_id(),
                "namespace": namespace,
                "run_id": run_id,
                "event": req.event,
                "data_schema": dump(req.data_schema),
                "expires_at": now + to_millis(req.expires_in),
                "created_at": now,
            }
            await tx.execute(
                f"INSERT INTO webhooks ({', '.join(values)}) VALUES ({_in_list(1, len(values))})",
                *values.values(),
            )
        return values

    async def claim(
        self,
        namespace: str,
        req: ClaimRequest,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> list[ClaimedRun]:
        """Long-poll for up to `max_runs` queued runs of the declared triples.

        `gone()` says whether the worker hung up: then the poll ends without claiming,
        for a run handed to a dead worker would wait for its claim to go idle again.
        """
        deadline = self.clock() + to_millis(req.wait)
        capabilities = sorted({(c.workflow, c.version, c.pool) for c in req.capabilities})
        await self._note_worker(namespace, req.worker_id, capabilities)
        while True:
            subscription = self.hub.subscribe(QUEUE)
            if gone is not None and await gone():
                return []
            claimed = await self._claim_once(namespace, req.worker_id, capabilities, req.max_runs)
            remaining = deadline - self.clock()
            if claimed or remaining <= 0:
                return claimed
            await subscription.wait(min(remaining, 1000) / 1000)

    async def _note_worker(
        self, namespace: str, worker_id: str, capabilities: list[tuple[str, str, str]]
    ) -> None:
        """Note which triples the worker serves (a run's detail says when none does).

        A worker long-polls over and over: its row is written when it is new or its
        triples changed, and otherwise at most every quarter of the idle timeout, which
        keeps it counted as live (heartbeats refresh it too).
        """
        now = self.clock()
        key = (namespace, worker_id)
        noted = self._workers_noted.get(key)
        if noted is not None and noted[0] == capabilities and now - noted[1] < self._idle_ms // 4:
            return
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO workers (id, namespace, capabilities, last_seen_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (namespace, id) DO UPDATE"
                " SET capabilities = excluded.capabilities, last_seen_at = excluded.last_seen_at",
                worker_id,
                namespace,
                json.dumps([list(c) for c in capabilities]),
                now,
            )
        if len(self._workers_noted) >= _MAX_WORKERS_NOTED:
            self._workers_noted.clear()  # workers come and go; forget the old ones at once
        self._workers_noted[key] = (capabilities, now)

    async def _claim_once(
        self,
        namespace: str,
        worker_id: str,
        capabilities: list[tuple[str, str, str]],
        limit: int,
    ) -> list[ClaimedRun]:
        args: list[Any] = [namespace, RunStatus.QUEUED.value]
        triples = []
        for workflow, version, pool in capabilities:
            n = len(args)
            triples.append(f"(workflow = ${n + 1} AND version = ${n + 2} AND pool = ${n + 3})")
            args += [workflow, version, pool]
        args.append(limit)
        queued = (
            "FROM runs WHERE namespace = $1 AND status = $2"
            f" AND ({' OR '.join(triples)}) ORDER BY ready_at, id LIMIT ${len(args)}"
        )
        # most polls find nothing: look before taking the write lock
        async with self.db.reader() as reader:
            found = await reader.fetch(f"SELECT id {queued}", *args)
        if not found:
            return []
        try:
            return await self._claim_rows(worker_id, f"SELECT * {queued}", args)
        except Exception as exc:
            if self._not_the_runs_fault(exc):
                raise
            _log.warn("claim failed; claiming its runs one by one", {"error": repr(exc)})
        # a run that cannot be claimed must not hold up the runs queued behind it: claim
        # one at a time, in queue order
        claimed: list[ClaimedRun] = []
        tried: set[str] = set()
        failed: list[tuple[str, Exception]] = []
        while len(claimed) < limit:
            async with self.db.reader() as reader:
                ids = [
                    row["id"]
                    for row in await reader.fetch(
                        f"SELECT id {queued}", *args[:-1], limit + len(tried)
                    )
                    if row["id"] not in tried
                ]
            if not ids:
                break
            tried.add(ids[0])
            try:
                claimed += await self._claim_rows(
                    worker_id,
                    "SELECT * FROM runs WHERE id = $1 AND status = $2",
                    [ids[0], RunStatus.QUEUED.value],
                )
            except Exception as exc:
                if self._not_the_runs_fault(exc):
                    raise
                failed.append((ids[0], exc))
        if failed and not claimed and len(tried) > 1:
            # no run could be claimed: the fault is not one run's (the database, say);
            # setting runs aside would fail healthy ones
            raise failed[0][1]
        for run_id, cause in failed:  # each failed alone, beside a run that did not
            await self._set_aside(run_id, cause)
        return claimed

    def _not_the_runs_fault(self, exc: Exception) -> bool:
        """Whether a failed claim says nothing about its runs: a race, or an outage."""
        return isinstance(exc, self.db.transient_errors) or is_outage(exc)

    async def _claim_rows(self, worker_id: str, select: str, args: list[Any]) -> list[ClaimedRun]:
        """Claim the queued runs `select` finds, with everything their replays need."""
        async with self.db.transaction() as tx:
            rows = await tx.fetch(f"{select}{tx.skip_locked}", *args)
            if not rows:
                return []
            now = self.clock()
            expires = now + self._idle_ms
            claimed: list[Row] = []
            for row in rows:
                revision = await move_run(
                    tx,
                    row,
                    RunStatus.RUNNING,
                    now,
                    f"claimed by {worker_id}",
                    fence=True,
                    claimed_by=worker_id,
                    claim_expires_at=expires,
                    claim_failures=0,
                )
                claimed.append(
                    {
                        **row,
                        "status": RunStatus.RUNNING.value,
                        "revision": revision,
                        "updated_at": now,
                    }
                )
            parts = await _replay_parts(
                tx,
                [r["id"] for r in claimed],
                first_claims={r["id"] for r in rows if r["revision"] == 0},
            )
            # built inside the transaction: a row that does not make a claim rolls it back
            return [
                ClaimedRun(run=run_summary(r), input=json.loads(r["input"]), **parts[r["id"]])
                for r in claimed
            ]

    async def _set_aside(self, run_id: str, exc: Exception) -> None:
        """Put a run whose claim failed alone at the back of its queue, the cause in its history.

        After `_MAX_CLAIM_FAILURES` failed claims in a row, the run fails with that cause.
        """
        cause = f"{type(exc).__name__}: {exc}"[:500]
        _log.error("a run cannot be claimed; set aside", {"run_id": run_id, "error": cause})
        async with self.db.transaction() as tx:
            run = await tx.fetchrow(f"SELECT * FROM runs WHERE id = $1{tx.lock_rows}", run_id)
            if run is None or run["status"] != RunStatus.QUEUED:
                return
            now = self.clock()
            failures = int(run["claim_failures"]) + 1
            reason = f"claim failed ({failures} of {_MAX_CLAIM_FAILURES}): {cause}"
            if failures >= _MAX_CLAIM_FAILURES:
                error = ErrorInfo(
                    type="aiki_core.ServerError",
                    message=f"run {run_id} could not be claimed: {cause}",
                    retryable=False,
                    code="server_error",
                    details={"run_id": run_id, "claim_failures": failures},
                )
                await move_run(
                    tx,
                    run,
                    RunStatus.FAILED,
                    now,
                    reason,
                    fence=True,
                    error=dump(error.model_dump(mode="json")),
                    claim_failures=failures,
                )
                return
            await tx.execute(
                "UPDATE runs SET claim_failures = $2, ready_at = $3 WHERE id = $1",
                run_id,
                failures,
                now,
            )
            await record_history(
                tx,
                namespace=run["namespace"],
                run_id=run_id,
                entity="run",
                entity_id=run_id,
                from_status=run["status"],
                to_status=run["status"],
                reason=reason,
                revision=run["revision"],
                now=now,
            )

    async def heartbeat(self, namespace: str, req: HeartbeatRequest) -> HeartbeatResponse:
        """Refresh the claims a worker holds; say what to do with each run."""
        answers: list[RunLeaseStatus] = []
        async with self.db.transaction() as tx:
            now = self.clock()
            await tx.execute(
                "UPDATE workers SET last_seen_at = $3 WHERE namespace = $1 AND id = $2",
                namespace,
                req.worker_id,
                now,
            )
            if not req.runs:
                return HeartbeatResponse(runs=[])
            rows = await tx.fetch(
                "SELECT id, status, revision, claimed_by, pause_requested FROM runs"
                f" WHERE namespace = $1 AND id {tx.in_array(2)}",
                namespace,
                tx.array([lease.run_id for lease in req.runs]),
            )
            by_id = {row["id"]: row for row in rows}
            keep: list[str] = []
            for lease in req.runs:
                directive = _directive(by_id.get(lease.run_id), lease.revision, req.worker_id)
                if directive in (RunDirective.CONTINUE, RunDirective.PAUSE):
                    keep.append(lease.run_id)  # a pausing run keeps its claim to the boundary
                answers.append(RunLeaseStatus(run_id=lease.run_id, directive=directive))
            if keep:
                # the conditions fence a release that committed after the read above
                await tx.execute(
                    "UPDATE runs SET claim_expires_at = $1 WHERE claimed_by = $2"
                    f" AND status = 'running' AND id {tx.in_array(3)}",
                    now + self._idle_ms,
                    req.worker_id,
                    tx.array(keep),
                )
        return HeartbeatResponse(runs=answers)

    async def record_task(
        self, namespace: str, run_id: str, req: RecordTaskRequest
    ) -> RecordTaskResponse:
        """Record one attempt of a task call of a claimed run."""
        try:
            async with self.db.transaction() as tx:
                run = await self._claimed_run(tx, run_id, namespace, req.revision)
                now = self.clock()
                recorded = await _write_task(tx, run, req, now, self.limits.max_tasks_per_run)
        except RunLimitError as exc:
            await self._fail_over_limit(namespace, run_id, req.revision, exc)
            raise
        if run["pause_requested"]:  # the worker learns it at its next record
            recorded = recorded.model_copy(update={"directive": RunDirective.PAUSE})
        return recorded

    async def start_child(
        self, namespace: str, parent_id: str, req: StartChildRequest
    ) -> StartRunResponse:
        """Start a child of a claimed run, once per (address, occurrence)."""
        async with self.db.transaction() as tx:
            parent = await self._claimed_run(tx, parent_id, namespace, req.revision)
            now = self.clock()
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
            row = await self._insert_run(
                tx,
                namespace=namespace,
                workflow=req.workflow,
                version=req.version,
                pool=pool,
                input_json=dump(req.input),
                fingerprint=content_hash([req.version, content_hash(req.input), pool]),
                reference_id=None,
                start_at=None,
                timeout_ms=None if req.timeout is None else to_millis(req.timeout),
                now=now,
                run_id=req.run_id,
                parent=(parent_id, req.address, req.occurrence),
            )
        return StartRunResponse(run=run_summary(row), created=True)

    async def transition(
        self, namespace: str, run_id: str, req: TransitionRunRequest
    ) -> RunSummary:
        """Complete, fail, suspend, release or continue a claimed run."""
        try:
            return await self._transition(namespace, run_id, req)
        except RunLimitError as exc:
            await self._fail_over_limit(namespace, run_id, req.revision, exc)
            raise

    async def _transition(
        self, namespace: str, run_id: str, req: TransitionRunRequest
    ) -> RunSummary:
        action = req.action
        async with self.db.transaction() as tx:
            run = await self._claimed_run(tx, run_id, namespace, req.revision)
            now = self.clock()
            for task in req.tasks:  # each record is fenced like the transition
                if task.revision != req.revision:
                    raise StaleRevisionError(run_id, task.revision, run["revision"])
            for task in req.tasks:
                await _write_task(tx, run, task, now, self.limits.max_tasks_per_run)
            if isinstance(action, CompleteRun):
                await move_run(
                    tx, run, RunStatus.COMPLETED, now, "completed", result=dump(action.result)
                )
            elif isinstance(action, FailRun):
                await self._fail(tx, run, action, now)
            elif isinstance(action, SuspendRun):
                await self._suspend(tx, run, action, now)
            elif isinstance(action, ReleaseRun):
                await requeue(tx, run, now, "released by its worker")
            elif isinstance(action, ContinueRun):
                await self._continue(tx, run, action, now)
            return await self._summary(tx, run_id)

    async def _fail_over_limit(
        self, namespace: str, run_id: str, revision: int, exc: RunLimitError
    ) -> None:
        """Fail the run whose record was refused over the limit (the refusal wrote nothing).

        The worker that holds it gets the refusal (a 409) and lets the run go.
        """
        async with self.db.transaction() as tx:
            run = await lock_run(tx, run_id, namespace)
            now = self.clock()
            if run is None or run["revision"] != revision or run["status"] != RunStatus.RUNNING:
                return  # another write ended the claim meanwhile
            error = ErrorInfo.from_exception(exc, include_stack=False)
            await move_run(
                tx,
                run,
                RunStatus.FAILED,
                now,
                "task limit reached",
                fence=True,
                error=dump(error.model_dump(mode="json")),
            )

    async def _continue(self, tx: Tx, run: Row, action: ContinueRun, now: int) -> None:
        """End `run` as completed, continued as a new run of its version with the input."""
        if run["parent_run_id"] is not None:
            # the parent waits for this run's own result: a chain would leave it none
            raise ConflictError(
                f"run {run['id']} is a child run; a child cannot continue as new",
                details={"run_id": run["id"]},
            )
        await self._insert_run(
            tx,
            namespace=run["namespace"],
            workflow=run["workflow"],
            version=run["version"],
            pool=run["pool"],
            input_json=dump(action.input),
            fingerprint=content_hash([run["version"], content_hash(action.input), run["pool"]]),
            reference_id=None,
            start_at=None,
            timeout_ms=run["timeout_ms"],
            now=now,
            run_id=action.run_id,
            continued_from=run["id"],
        )
        await move_run(
            tx,
            run,
            RunStatus.COMPLETED,
            now,
            f"continued as run {action.run_id}",
            continued_as=action.run_id,
        )

    async def _fail(self, tx: Tx, run: Row, action: FailRun, now: int) -> None:
        error = dump(action.error.model_dump(mode="json"))
        if not action.retries:
            await move_run(tx, run, RunStatus.FAILED, now, "failed", error=error)
            return
        retry_at = _due(now, action.retry_at, action.retry_delay)
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

    async def _suspend(self, tx: Tx, run: Row, action: SuspendRun, now: int) -> None:
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
        for wait in sorted(action.waits, key=_registration_order):
            over, due = await self._register_wait(tx, run["id"], wait, now)
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
        kind = next(k for k in _WAIT_PRIORITY if any(w.kind == k for w in action.waits))
        await move_run(
            tx,
            run,
            _WAIT_STATUS_BY_KIND[kind],
            now,
            f"suspended on {', '.join(sorted({w.kind for w in action.waits}))}",
            wake_at=min(due_times) if due_times else None,
            waits=dump(pending),
        )

    async def _register_wait(
        self, tx: Tx, run_id: str, wait: RunWait, now: int
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
                "INSERT INTO child_waits (run_id, child_run_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING",
                run_id,
                wait.child_run_id,
            )
            return None, None
        retry_at = await _retry_due(tx, run_id, wait)
        return ("the retry is due" if retry_at is None or retry_at <= now else None), retry_at

    # -- helpers -------------------------------------------------------------------------

    async def _locked_run(self, tx: Tx, run_id: str, namespace: str) -> Row:
        run = await lock_run(tx, run_id, namespace)
        if run is None:
            raise NotFoundError("run", run_id)
        return run

    async def _claimed_run(self, tx: Tx, run_id: str, namespace: str, revision: int) -> Row:
        run = await self._locked_run(tx, run_id, namespace)
        if run["revision"] != revision:
            raise StaleRevisionError(run_id, revision, run["revision"])
        if run["status"] != RunStatus.RUNNING:
            raise IllegalTransitionError("run", run_id, run["status"], "written by its worker")
        return run

    async def _summary(self, tx: Tx, run_id: str) -> RunSummary:
        row = await tx.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = $1", run_id)
        assert row is not None
        return run_summary(row)


def _fingerprint(req: StartRunRequest) -> str:
    """What a reference id's run must match for a start to return it.

    The input counts by its fingerprint: the client's (keyed, when it seals the input,
    whose ciphertext differs on every start) or else its plain SHA-256.
    """
    return content_hash([req.version, req.input_hash or content_hash(req.input), req.pool])


def _start_time(req: StartRunRequest, now: int) -> int | None:
    if req.start_at is not None:
        return to_ms(req.start_at)
    if req.delay is not None:
        return now + to_millis(req.delay)
    return None


def _directive(run: Row | None, revision: int, worker_id: str) -> RunDirective:
    if run is None:
        return RunDirective.LOST
    if run["status"] == RunStatus.CANCELLED:
        return RunDirective.CANCEL
    if run["revision"] != revision or run["claimed_by"] != worker_id:
        return RunDirective.LOST
    if run["status"] != RunStatus.RUNNING:
        return RunDirective.LOST
    if run["pause_requested"]:
        return RunDirective.PAUSE  # stop at the next task boundary, with the claim
    return RunDirective.CONTINUE


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


def _due(now: int, at: datetime | None, after: timedelta | None) -> int | None:
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
        mode="json", include={"kind", "name", "occurrence", "child_run_id", "address"}
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
        _due(now, wait.wake_at, wait.duration),
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
        _due(now, wait.timeout_at, wait.timeout),
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
        await _deliver_event(tx, run_id, wait.name, wait.occurrence, event["id"])
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


async def _deliver_event(tx: Tx, run_id: str, name: str, occurrence: int, event_id: str) -> None:
    await tx.execute(
        "UPDATE event_waits SET status = 'received', event_id = $4"
        " WHERE run_id = $1 AND name = $2 AND occurrence = $3",
        run_id,
        name,
        occurrence,
        event_id,
    )
    await tx.execute("UPDATE events SET consumed = 1 WHERE id = $1", event_id)


async def _replay_parts(
    tx: Tx, run_ids: list[str], *, first_claims: Collection[str] = ()
) -> dict[str, dict[str, list[Any]]]:
    """Tasks, sleeps, event waits, events and children of each run, for replay or detail.

    Runs in `first_claims` have never been claimed: nothing but events sent to them
    can exist yet, so only their events are read.
    """
    parts: dict[str, dict[str, list[Any]]] = {
        run_id: {"tasks": [], "sleeps": [], "event_waits": [], "events": [], "children": []}
        for run_id in run_ids
    }
    # every list of ids is one array parameter: a run may have any number of tasks
    for e in await tx.fetch(
        f"SELECT * FROM events WHERE run_id {tx.in_array(1)} ORDER BY received_at, id",
        tx.array(run_ids),
    ):
        parts[e["run_id"]]["events"].append(event_record(e))
    resumed = [run_id for run_id in run_ids if run_id not in first_claims]
    if not resumed:
        return parts
    ids = tx.array(resumed)
    in_ids = tx.in_array(1)
    tasks = await tx.fetch(
        f"SELECT * FROM tasks WHERE run_id {in_ids} ORDER BY created_at, id", ids
    )
    attempts: dict[str, list[Row]] = {}
    if tasks:
        for a in await tx.fetch(
            "SELECT a.* FROM task_attempts a JOIN tasks t ON t.id = a.task_id"
            f" WHERE t.run_id {in_ids} ORDER BY a.task_id, a.attempt",
            ids,
        ):
            attempts.setdefault(a["task_id"], []).append(a)
    for t in tasks:
        parts[t["run_id"]]["tasks"].append(task_record(t, attempts.get(t["id"], [])))
    for sl in await tx.fetch(
        f"SELECT * FROM sleeps WHERE run_id {in_ids} ORDER BY name, occurrence", ids
    ):
        parts[sl["run_id"]]["sleeps"].append(sleep_record(sl))
    for w in await tx.fetch(
        f"SELECT * FROM event_waits WHERE run_id {in_ids} ORDER BY name, occurrence", ids
    ):
        parts[w["run_id"]]["event_waits"].append(event_wait_record(w))
    for c in await tx.fetch(
        f"SELECT * FROM runs WHERE parent_run_id {in_ids} ORDER BY created_at, id", ids
    ):
        parts[c["parent_run_id"]]["children"].append(child_record(c))
    return parts


async def _write_task(
    tx: Tx, run: Row, req: RecordTaskRequest, now: int, max_tasks: int
) -> RecordTaskResponse:
    """Write one task attempt of a run its worker holds (checked by the caller).

    A new task call past `max_tasks` of the run raises `RunLimitError`. A call that
    failed for good in an earlier workflow-level attempt of the run may be recorded
    again by a later one (it runs again); its attempts keep their numbers and history.
    """
    run_id = run["id"]
    run_attempt = int(run["attempt"])
    error_json = None if req.error is None else dump(req.error.model_dump(mode="json"))
    finished = now if req.status in (TaskStatus.COMPLETED, TaskStatus.FAILED) else None
    next_attempt_at = _due(now, req.retry_at, req.retry_delay)
    result_json = None if req.status is not TaskStatus.COMPLETED else dump(req.result)
    # most calls are recorded once, completed: try the insert first
    task_id = _new_id()
    previous = None
    inserted = await tx.fetch(
        "INSERT INTO tasks (id, run_id, address, occurrence, name, status, input,"
        " result, error, next_attempt_at, created_at, finished_at, run_attempt, notice)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        " ON CONFLICT (run_id, address, occurrence) DO NOTHING RETURNING id",
        task_id,
        run_id,
        req.address,
        req.occurrence,
        req.name,
        req.status.value,
        dump(req.input),
        result_json,
        error_json,
        next_attempt_at,
        now,
        finished,
        run_attempt,
        req.notice,
    )
    if inserted:
        # counted on the run's row: the check costs no count of the run's tasks
        count = await tx.fetchrow(
            "UPDATE runs SET task_count = task_count + 1 WHERE id = $1 RETURNING task_count",
            run_id,
        )
        assert count is not None
        if count["task_count"] > max_tasks:
            raise RunLimitError(run_id, max_tasks)  # the transaction writes nothing
    else:
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
    attempt_finished = None if req.status is TaskStatus.RUNNING else now
    attempt_started = now if req.started_at is None else min(to_ms(req.started_at), now)
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
        reason=f"{req.name} attempt {req.attempt}",
        revision=run["revision"],
        now=now,
    )
    return RecordTaskResponse(task_id=task_id, status=req.status)
