"""Starting runs: a client's start, a schedule's occurrence, a child and a continuation.

Each is one row inserted in the caller's transaction, with its first history entry;
a start with a reference id returns the run that id started before, if its input and
version match (`fingerprint`), and so does a start of a run id that exists (the same
start sent twice: its client minted the id). A start with a rate limit reserves its units in the
same transaction, and is scheduled for when they are granted.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiki_core import ConflictError, ParentClosePolicy, ReferenceIdConflictError, RunStatus
from aiki_core.wire import StartRunResponse, content_hash, to_millis
from aiki_server._clock import MAX_MS, from_ms, to_ms
from aiki_server._flow import apply_strategy, declare, start_rank
from aiki_server._lifecycle import record_history
from aiki_server._notify import TIMERS, queued_topics
from aiki_server._rate_limits import acquire_in
from aiki_server._rows import dump, new_id, placeholders, run_summary

if TYPE_CHECKING:
    from aiki_core.wire import ConcurrencySpec, RateLimitUse, StartRunRequest
    from aiki_server._storage._database import Row, Tx


def start_fingerprint(req: StartRunRequest) -> str:
    """What a reference id's run must match for a start to return it.

    The input counts by its fingerprint: the client's (keyed, when it seals the input,
    whose ciphertext differs on every start) or else its plain SHA-256.
    """
    return content_hash([req.version, req.input_hash or content_hash(req.input), req.pool])


async def start_run_in(
    tx: Tx,
    namespace: str,
    req: StartRunRequest,
    now: int,
    *,
    fingerprint: str | None = None,
    schedule_id: str | None = None,
) -> StartRunResponse:
    """Create a run, or return the one its reference id already started.

    `fingerprint` is `start_fingerprint(req)`, if the caller hashed it before the write.
    """
    fingerprint = fingerprint or start_fingerprint(req)
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
    elif req.run_id is not None:
        # the same start sent again (a client failing over after its connection dropped)
        existing = await tx.fetchrow(
            "SELECT * FROM runs WHERE id = $1 AND namespace = $2", req.run_id, namespace
        )
        if (
            existing is not None
            and existing["workflow"] == req.workflow
            and existing["reference_id"] is None
            and existing["parent_run_id"] is None
            and existing["input_hash"] == fingerprint
        ):
            return StartRunResponse(run=run_summary(existing), created=False)
    start_at, reason = _start_time(req, now), "started"
    if req.rate_limit is not None:
        start_at, reason = await _rate_limited_start(tx, namespace, req.rate_limit, now)
    row = await insert_run(
        tx,
        namespace=namespace,
        workflow=req.workflow,
        version=req.version,
        pool=req.pool,
        input_json=dump(req.input),
        fingerprint=fingerprint,
        reference_id=req.reference_id,
        start_at=start_at,
        timeout_ms=None if req.timeout is None else to_millis(req.timeout),
        now=now,
        run_id=req.run_id,
        schedule_id=schedule_id,
        trace_context=req.trace_context,
        reason=reason,
        priority=req.priority or 0,
        concurrency=req.concurrency,
    )
    return StartRunResponse(run=run_summary(row), created=True)


async def insert_run(
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
    parent_close_policy: ParentClosePolicy = ParentClosePolicy.TERMINATE,
    schedule_id: str | None = None,
    continued_from: str | None = None,
    trace_context: dict[str, str] | None = None,
    reason: str = "started",
    priority: int = 0,
    concurrency_key: str | None = None,
    concurrency: ConcurrencySpec | None = None,
) -> Row:
    """Insert a run (queued, or scheduled to start later) and its first history entry.

    A child (`parent`: its parent's id, its address and occurrence) keeps its
    `parent_close_policy`. `trace_context` is its starter's, continued by each worker
    that claims it; `reason` is the history entry's. A start's `concurrency` declares
    its workflow's limit and gives the run its key (else `concurrency_key`, a
    continuation's); its strategy may cancel the new run (it is returned cancelled) or
    older ones (see `_flow`).
    """
    limit = None
    if concurrency is not None:
        limit = await declare(tx, namespace, workflow, concurrency, now)
        concurrency_key = concurrency.key
    delayed = start_at is not None and start_at > now
    status = RunStatus.SCHEDULED if delayed else RunStatus.QUEUED
    # a deadline past the year 9999 (a late start plus a long timeout) is never in
    # effect: it is the last millisecond of 9999, the latest time the wire can show
    deadline = None if timeout_ms is None else min(max(start_at or now, now) + timeout_ms, MAX_MS)
    if run_id is None:
        run_id = new_id()
    elif await tx.fetchrow("SELECT id FROM runs WHERE id = $1", run_id) is not None:
        raise ConflictError(f"a run with id {run_id} exists", details={"run_id": run_id})
    parent_id, child_address, child_occurrence = parent or (None, None, None)
    rank = now - priority * tx.flow.step_ms  # a delayed run is ranked again as it queues
    if status is RunStatus.QUEUED:
        rank = await start_rank(tx, namespace, workflow, concurrency_key, priority, now)
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
        "parent_close_policy": None if parent_id is None else parent_close_policy.value,
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
        "trace_context": None if trace_context is None else json.dumps(trace_context),
        "priority": priority,
        "concurrency_key": concurrency_key,
        "rank": rank,
    }
    await tx.execute(
        f"INSERT INTO runs ({', '.join(values)}) VALUES ({placeholders(1, len(values))})",
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
        reason=reason,
        revision=0,
        now=now,
    )
    if status is RunStatus.QUEUED:
        tx.publish(*queued_topics(namespace, workflow, version, pool))
    else:
        tx.publish(TIMERS)
    tx.observe(lambda metrics: metrics.run_started(values))
    if deadline is not None:
        tx.publish(TIMERS)
    if limit is not None and await apply_strategy(tx, values, limit, now):
        cancelled = await tx.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
        assert cancelled is not None
        return cancelled
    return values


async def _rate_limited_start(
    tx: Tx, namespace: str, use: RateLimitUse, now: int
) -> tuple[int | None, str]:
    """Reserve the start's units: when the run may start (`None`: now), and why then."""
    grant = await acquire_in(tx, namespace, use.name, use.units, use.key, lambda: now, reserve=True)
    if grant.at <= now:
        return None, "started"
    key = f" (key {use.key})" if use.key else ""
    until = from_ms(grant.at).isoformat()
    return grant.at, f"started; waiting for rate limit {use.name}{key} until {until}"


def _start_time(req: StartRunRequest, now: int) -> int | None:
    if req.start_at is not None:
        return to_ms(req.start_at)
    if req.delay is not None:
        return now + to_millis(req.delay)
    return None
