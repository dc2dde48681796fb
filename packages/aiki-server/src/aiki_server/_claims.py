"""Claims: a worker long-polls for queued runs of the triples it serves.

It gets them with everything their replays need. Most polls find nothing, and look
before they take the write lock: one read, for cleanups and queued runs together. A
run whose claim fails (a row the server cannot hand out, say) must not hold up the
runs queued behind it: it is set aside at the back of its queue, and failed after a
few such claims.

Cleanups go first: a cancelled or timed-out run waiting in `cleaning_up` for a worker
is claimed before the queued runs of the same triples, without a change of status
and without flow control (its deadline is short, and it ends the run). A cleanup
whose claim fails is left to its deadline, which ends the run all the same; the
cleanups behind it are then claimed one by one, so it holds up none of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiki_core import ErrorInfo, RunStatus
from aiki_core.wire import (
    ClaimedRun,
    WorkerPage,
    WorkerSummary,
    WorkflowCapability,
    to_millis,
)
from aiki_server._clock import from_ms
from aiki_server._flow import LIMITED, Group, admit
from aiki_server._lifecycle import HELD, hand_cleanup, move_run, record_history
from aiki_server._logs import component
from aiki_server._metrics import grouped_runs_query
from aiki_server._notify import queue_topic, slots_topic
from aiki_server._replay import replay_parts
from aiki_server._rows import dump, run_summary
from aiki_server._storage._outage import is_outage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from datetime import datetime

    from aiki_core.wire import ClaimRequest
    from aiki_server._clock import Clock
    from aiki_server._limits import Limits
    from aiki_server._notify import WakeHub
    from aiki_server._storage._database import Database, Row, Tx

_MAX_WORKERS_NOTED = 10_000
_MAX_CLAIM_FAILURES = 3
"""Claims of one run that fail in a row before the run is failed with the cause."""

_LOOK_AHEAD = 4
_LOOK_AHEAD_MIN = 16
"""A claim that may meet full concurrency groups reads `max_runs * 4 + 16` candidates."""

_MAX_QUEUES = 1000
_QUEUES = grouped_runs_query(
    ["workflow", "version", "pool"], [RunStatus.QUEUED.value], in_namespace=True
)

_log = component("claims")


@dataclass(frozen=True, slots=True)
class Queue:
    """The runs of one (workflow, version, pool) waiting for a worker to claim them."""

    workflow: str
    version: str
    pool: str
    queued: int
    oldest_at: datetime
    """When the run queued longest became ready."""


@dataclass(frozen=True, slots=True)
class _Look:
    """What a poll's one read before the write lock saw."""

    cleanup: bool
    """Whether a cleanup waits for a worker (claimed first)."""
    queued: list[Row]
    """The first queued runs: `id`, and whether their workflow has a limit (`limited`)."""
    unindexed: str
    """The database's `Tx.unindexed`."""


class Claims:
    """Hands queued runs to the workers that poll for them."""

    def __init__(self, db: Database, hub: WakeHub, clock: Clock, limits: Limits) -> None:
        self._db = db
        self._hub = hub
        self._clock = clock
        self._limits = limits
        self._workers_noted: dict[tuple[str, str], tuple[list[tuple[str, str, str]], int]] = {}
        """(namespace, worker id) -> the triples last written for it, and when."""

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
        deadline = self._clock() + to_millis(req.wait)
        triples = sorted({(c.workflow, c.version, c.pool) for c in req.capabilities})
        await self._note_worker(namespace, req.worker_id, triples)
        # woken by a run queued for one of its triples, or a slot freed in one of their
        # workflows, and by nothing else: it reads the database only then
        topics = [queue_topic(namespace, *triple) for triple in triples]
        topics += [slots_topic(namespace, workflow) for workflow in {t[0] for t in triples}]
        while True:
            with self._hub.subscribe(*topics) as subscription:
                if gone is not None and await gone():
                    return []
                claimed = await self.claim_now(namespace, req.worker_id, triples, req.max_runs)
                remaining = deadline - self._clock()
                if claimed or remaining <= 0:
                    return claimed
                await subscription.wait(remaining / 1000)

    async def claim_now(
        self,
        namespace: str,
        worker_id: str,
        capabilities: Iterable[tuple[str, str, str]],
        max_runs: int,
    ) -> list[ClaimedRun]:
        """Claim up to `max_runs` queued runs of the (workflow, version, pool) triples now.

        One look at the queue, no waiting: a long-poll's step, and the push
        dispatcher's claim for an endpoint (`worker_id` `endpoint:<id>`, which is not
        noted as a worker: the endpoint's own row says how it fares).
        """
        return await self._claim_once(namespace, worker_id, sorted(set(capabilities)), max_runs)

    async def list_workers(self, namespace: str) -> WorkerPage:
        """The workers the namespace has heard from, with the runs each holds now."""
        async with self._db.reader(off_loop=True) as tx:
            rows = await tx.fetch(
                "SELECT id, capabilities, last_seen_at FROM workers WHERE namespace = $1"
                " ORDER BY last_seen_at DESC, id",
                namespace,
            )
            held = await tx.fetch(  # the held runs alone (`runs_claim_due`)
                f"SELECT claimed_by, COUNT(*) AS n FROM runs WHERE {tx.unindexed}namespace = $1"
                f" AND claim_expires_at IS NOT NULL AND status {tx.in_array(2)}"
                " GROUP BY claimed_by",
                namespace,
                tx.array(list(HELD)),
            )
        running = {row["claimed_by"]: row["n"] for row in held}
        live_since = self._clock() - self._limits.claim_idle_ms
        return WorkerPage(
            workers=[
                WorkerSummary(
                    id=row["id"],
                    capabilities=[
                        WorkflowCapability(workflow=w, version=v, pool=p)
                        for w, v, p in json.loads(row["capabilities"])
                    ],
                    running=running.get(row["id"], 0),
                    last_seen_at=from_ms(row["last_seen_at"]),
                    live=row["last_seen_at"] >= live_since,
                )
                for row in rows
            ]
        )

    async def list_queues(self, namespace: str) -> list[Queue]:
        """The namespace's queued runs per triple, the longest waiting first."""
        async with self._db.reader(off_loop=True) as tx:
            rows = await tx.fetch(_QUEUES, _MAX_QUEUES, namespace)
        queues = [
            Queue(r["workflow"], r["version"], r["pool"], int(r["n"]), from_ms(int(r["oldest"])))
            for r in rows
        ]
        return sorted(queues, key=lambda q: (q.oldest_at, q.workflow, q.version, q.pool))

    async def _note_worker(
        self, namespace: str, worker_id: str, capabilities: list[tuple[str, str, str]]
    ) -> None:
        """Note which triples the worker serves (a run's detail says when none does).

        A worker long-polls over and over: its row is written when it is new or its
        triples changed, and otherwise at most every quarter of the idle timeout, which
        keeps it counted as live (heartbeats refresh it too).
        """
        now = self._clock()
        key = (namespace, worker_id)
        noted = self._workers_noted.get(key)
        recently = now - self._limits.claim_idle_ms // 4
        if noted is not None and noted[0] == capabilities and noted[1] > recently:
            return

        async def note(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO workers (id, namespace, capabilities, last_seen_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (namespace, id) DO UPDATE"
                " SET capabilities = excluded.capabilities, last_seen_at = excluded.last_seen_at",
                worker_id,
                namespace,
                json.dumps([list(c) for c in capabilities]),
                now,
            )

        await self._db.write(note)
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
        look = await self._look(namespace, capabilities, limit)
        claimed: list[ClaimedRun] = []
        if look.cleanup:  # cleanups first: each ends a run, within its deadline
            claimed = await self._claim_cleanups(namespace, worker_id, capabilities, limit)
        if look.queued and len(claimed) < limit:
            claimed += await self._claim_queued(
                namespace, worker_id, capabilities, limit - len(claimed), look
            )
        return claimed

    async def _look(
        self, namespace: str, capabilities: list[tuple[str, str, str]], limit: int
    ) -> _Look:
        """One read before the write lock (most polls find nothing): the triples' queue."""
        args: list[Any] = [namespace, RunStatus.CLEANING_UP.value, RunStatus.QUEUED.value]
        cleanups = _triples(capabilities, args, status=2)
        queued = _triples(capabilities, args, status=3)
        args.append(limit)
        async with self._db.reader() as reader:
            # each triple is a range of the queue's index (`runs_queue`), which holds the
            # status first: the namespace's index would walk every run it ever had
            rows = await reader.fetch(
                "SELECT id, 1 AS cleanup, 1 = 0 AS limited FROM (SELECT id FROM runs"
                f" WHERE {reader.unindexed}namespace = $1 AND claimed_by IS NULL"
                f" AND ({cleanups}) ORDER BY rank, id LIMIT 1) AS c UNION ALL"
                " SELECT id, 0 AS cleanup, limited FROM"
                f" (SELECT id, {LIMITED} AS limited FROM runs"
                f" WHERE {reader.unindexed}namespace = $1 AND ({queued})"
                f" ORDER BY rank, id LIMIT ${len(args)}) AS q",
                *args,
            )
        return _Look(
            cleanup=any(row["cleanup"] for row in rows),
            queued=[row for row in rows if not row["cleanup"]],
            unindexed=reader.unindexed,
        )

    async def _claim_cleanups(
        self,
        namespace: str,
        worker_id: str,
        capabilities: list[tuple[str, str, str]],
        limit: int,
    ) -> list[ClaimedRun]:
        """Claim up to `limit` runs waiting in `cleaning_up` for a worker (`_look` saw one).

        When they cannot be claimed together, each is claimed on its own, in order: one
        that fails is left to its deadline and holds up none of those behind it.
        """
        args: list[Any] = [namespace, RunStatus.CLEANING_UP.value]
        waiting = (
            f"FROM runs WHERE namespace = $1 AND status = $2 AND claimed_by IS NULL"
            f" AND ({_triples(capabilities, args)}) ORDER BY rank, id LIMIT "
        )

        def claiming(select: str, values: list[Any]) -> Callable[[Tx], Awaitable[list[ClaimedRun]]]:
            """The transaction that claims the cleanups `select` finds."""

            async def claim(tx: Tx) -> list[ClaimedRun]:
                rows = await tx.fetch(f"SELECT * {select}{tx.skip_locked}", *values)
                now = self._clock()
                expires = now + self._limits.claim_idle_ms
                claimed: list[Row] = []
                for row in rows:
                    reason = f"cleanup claimed by {worker_id}"
                    revision = await hand_cleanup(
                        tx, row, now, reason, worker_id=worker_id, expires=expires
                    )
                    claimed.append({**row, "revision": revision, "updated_at": now})
                return await claimed_runs(tx, claimed, first_claims=set())

            return claim

        try:
            return await self._db.write(claiming(f"{waiting}{int(limit)}", args))
        except Exception as exc:
            if self._not_the_runs_fault(exc):
                raise
            _log.warn("cleanup claim failed; claiming them one by one", {"error": repr(exc)})
        one = "FROM runs WHERE id = $1 AND status = $2 AND claimed_by IS NULL"
        claimed: list[ClaimedRun] = []
        tried: set[str] = set()
        while len(claimed) < limit and len(tried) < limit + _MAX_CLAIM_FAILURES:
            async with self._db.reader() as reader:
                found = await reader.fetch(f"SELECT id {waiting}{limit + len(tried)}", *args)
            ids = [row["id"] for row in found if row["id"] not in tried]
            if not ids:
                break
            tried.add(ids[0])
            try:
                claimed += await self._db.write(
                    claiming(one, [ids[0], RunStatus.CLEANING_UP.value])
                )
            except Exception as exc:
                if self._not_the_runs_fault(exc):
                    raise
                _log.error(
                    "a cleanup cannot be claimed; left to its deadline",
                    {"run_id": ids[0], "error": repr(exc)},
                )
        return claimed

    async def _claim_queued(
        self,
        namespace: str,
        worker_id: str,
        capabilities: list[tuple[str, str, str]],
        limit: int,
        look: _Look,
    ) -> list[ClaimedRun]:
        """Claim up to `limit` queued runs (`look` saw some)."""
        args: list[Any] = [namespace, RunStatus.QUEUED.value]
        triples = _triples(capabilities, args)
        args.append(limit)
        queued = (
            f"FROM runs WHERE {look.unindexed}namespace = $1"
            f" AND ({triples}) ORDER BY rank, id LIMIT ${len(args)}"
        )
        found = look.queued
        # a run whose concurrency group is full is passed over: look further down the
        # queue for runs that may go (only when a run at the front has a limit)
        gated = any(row["limited"] for row in found)
        if gated:
            args[-1] = limit * _LOOK_AHEAD + _LOOK_AHEAD_MIN
        try:
            return await self._claim_rows(
                namespace,
                worker_id,
                f"SELECT *, {LIMITED} AS limited {queued}",
                args,
                limit,
                gated=gated,
            )
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
            async with self._db.reader() as reader:
                ids = [
                    row["id"]
                    for row in await reader.fetch(
                        f"SELECT id {queued}", *args[:-1], args[-1] + len(tried)
                    )
                    if row["id"] not in tried
                ]
            if not ids:
                break
            tried.add(ids[0])
            try:
                claimed += await self._claim_rows(
                    namespace,
                    worker_id,
                    f"SELECT *, {LIMITED} AS limited FROM runs WHERE id = $1 AND status = $2",
                    [ids[0], RunStatus.QUEUED.value],
                    1,
                    gated=gated,
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
        return isinstance(exc, self._db.transient_errors) or is_outage(exc)

    async def _claim_rows(
        self,
        namespace: str,
        worker_id: str,
        select: str,
        args: list[Any],
        limit: int,
        *,
        gated: bool,
    ) -> list[ClaimedRun]:
        """Claim the queued runs `select` finds, with everything their replays need.

        `gated`: some may have a concurrency limit; up to `limit` of those with room go.
        `select` says which have one (`limited`): the runs a poll saw may be gone when it
        claims, and the ones it finds then gated all the same.
        """

        async def claim(tx: Tx) -> list[ClaimedRun]:
            if gated:  # the candidates read, only those admitted are locked
                candidates = await tx.fetch(select, *args)
                admitted = await admit(tx, namespace, candidates, limit, _past(tx, select, args))
                rows = []
                if admitted:  # by id alone: the ids' index, whatever the planner knows
                    locked = await tx.fetch(
                        f"SELECT * FROM runs WHERE id {tx.in_array(1)}{tx.skip_locked}",
                        tx.array([row["id"] for row in admitted]),
                    )
                    rows = sorted(
                        (row for row in locked if row["status"] == RunStatus.QUEUED),
                        key=lambda row: (row["rank"], row["id"]),
                    )
            else:
                rows = await tx.fetch(f"{select}{tx.skip_locked}", *args)
                if any(row["limited"] for row in rows):  # the runs the poll saw were taken
                    rows = await admit(tx, namespace, rows, limit)
            if not rows:
                return []
            now = self._clock()
            expires = now + self._limits.claim_idle_ms
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
            first_claims = {r["id"] for r in rows if r["revision"] == 0}
            return await claimed_runs(tx, claimed, first_claims=first_claims)

        return await self._db.write(claim)

    async def _set_aside(self, run_id: str, exc: Exception) -> None:
        """Put a run whose claim failed alone at the back of its queue, the cause in its history.

        After `_MAX_CLAIM_FAILURES` failed claims in a row, the run fails with that cause.
        """
        cause = f"{type(exc).__name__}: {exc}"[:500]
        _log.error("a run cannot be claimed; set aside", {"run_id": run_id, "error": cause})

        async def set_aside(tx: Tx) -> None:
            run = await tx.fetchrow(f"SELECT * FROM runs WHERE id = $1{tx.lock_rows}", run_id)
            if run is None or run["status"] != RunStatus.QUEUED:
                return
            now = self._clock()
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
                "UPDATE runs SET claim_failures = $2, ready_at = $3, rank = $3 WHERE id = $1",
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

        await self._db.write(set_aside)


def _triples(capabilities: list[tuple[str, str, str]], args: list[Any], status: int = 2) -> str:
    """The condition that a run in the status at `$status` is of one of the triples.

    Their values are appended to `args`. Each triple is a range of the queue's index
    (`runs_queue`), which holds the status first.
    """
    triples = []
    for workflow, version, pool in capabilities:
        n = len(args)
        triples.append(
            f"(status = ${status} AND workflow = ${n + 1} AND version = ${n + 2}"
            f" AND pool = ${n + 3})"
        )
        args += [workflow, version, pool]
    return " OR ".join(triples)


async def claimed_runs(tx: Tx, claimed: list[Row], *, first_claims: set[str]) -> list[ClaimedRun]:
    """The claims of the rows just claimed, with everything their replays need.

    Built inside the transaction: a row that does not make a claim rolls it back.
    """
    parts = await replay_parts(tx, [r["id"] for r in claimed], first_claims=first_claims)
    return [
        ClaimedRun(
            run=run_summary(r),
            input=json.loads(r["input"]),
            trace_context=r["trace_context"] and json.loads(r["trace_context"]),
            cleanup=_cleanup(r),
            **parts[r["id"]],
        )
        for r in claimed
    ]


def _cleanup(run: Row) -> ErrorInfo | None:
    """What a run claimed for its cleanup ends with (its error), or None."""
    if run["status"] != RunStatus.CLEANING_UP or run["error"] is None:
        return None
    return ErrorInfo.model_validate(json.loads(run["error"]))


def _past(
    tx: Tx, select: str, args: list[Any]
) -> Callable[[list[Group]], Awaitable[list[Row]]] | None:
    """How a gated claim reads the queue past full groups (`None`: `select` is one run)."""
    if " ORDER BY " not in select:
        return None

    async def past(full: list[Group]) -> list[Row]:
        more = list(args)
        unless = "".join(f" AND NOT ({group.where(more)})" for group in full)
        return await tx.fetch(select.replace(" ORDER BY ", f"{unless} ORDER BY "), *more)

    return past
