"""Which versions are served, and moving in-flight runs from one version to another.

A (workflow, version, pool) triple is served while a live worker declared it on its
last claim (seen within the claim idle timeout) or a registered workflow endpoint
lists it. A run not yet ended on a triple nothing serves is *unserved*: its detail
says so and `list_runs(unserved=True)` finds it. An operator then migrates it to a
served version, or cancels it.

A migration moves runs in one transaction: their `version` changes, their revision is
bumped (fencing any zombie of an old claim) and each gets a history row. Nothing else
changes: a sleeping run keeps its wake-up, a queued one its place, a paused one stays
paused; its next execution replays its records on the new version (content-addressed,
so every call the new code still makes with the same input is reused).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiki_core import ConflictError, IllegalTransitionError, NotFoundError, RunStatus
from aiki_core.wire import (
    MAX_MIGRATED_PER_CALL,
    MIGRATABLE_STATUSES,
    MigrateRunsResponse,
    SkippedRun,
)
from aiki_server._endpoints import list_endpoints
from aiki_server._lifecycle import TERMINAL, claims_look_again, record_history
from aiki_server._notify import queued_topics, run_topic
from aiki_server._rows import run_summary

if TYPE_CHECKING:
    from aiki_core.wire import MigrateRunsRequest
    from aiki_server._storage._database import Row, Tx

Triple = tuple[str, str, str]

UNSERVED_STATUSES = frozenset(s for s in RunStatus if not s.is_terminal) - {RunStatus.RUNNING}
"""Statuses in which a run can be unserved: not ended, and not held by a worker."""


def triple_key(workflow: str, version: str, pool: str) -> str:
    """One text for a triple (names hold no spaces), to match a set of them in SQL."""
    return f"{workflow} {version} {pool}"


TRIPLE_KEY_SQL = "workflow || ' ' || version || ' ' || pool"
"""`triple_key` of a `runs` row, in SQL."""


async def worker_triples(tx: Tx, namespace: str, live_since: int) -> set[Triple]:
    """The triples the namespace's workers seen since `live_since` declared."""
    rows = await tx.fetch(
        "SELECT capabilities FROM workers WHERE namespace = $1 AND last_seen_at >= $2",
        namespace,
        live_since,
    )
    return {(w, v, p) for row in rows for w, v, p in json.loads(row["capabilities"])}


async def served_triples(tx: Tx, namespace: str, live_since: int) -> set[Triple]:
    """The triples a live worker or a registered workflow endpoint serves."""
    served = await worker_triples(tx, namespace, live_since)
    for endpoint in await list_endpoints(tx, "workflows", namespace):
        served.update(endpoint.workflows)
    return served


def unserved_reason(run: Row) -> str:
    """Why a run waits for a worker of its version (its detail's `pending_reason`)."""
    if run["status"] == RunStatus.QUEUED:
        then = "the run stays queued until one does"
    else:
        then = "the run will wait for one when it is next due to run"
    return (
        f"no connected worker serves workflow {run['workflow']!r} version"
        f" {run['version']!r} in pool {run['pool']!r}; {then}"
    )


async def migrate_runs(
    tx: Tx, namespace: str, req: MigrateRunsRequest, now: int, live_since: int
) -> MigrateRunsResponse:
    """Move the runs `req` selects from its old version to its new one (see the module)."""
    await check_versions(tx, namespace, req)
    movable, skipped, has_more = await selected_runs(tx, namespace, req, req.limit, lock=True)
    reason = f"migrated from version {req.from_version!r} to {req.to_version!r}"
    for run in movable:
        revision = int(run["revision"]) + 1
        await tx.execute(
            "UPDATE runs SET version = $2, revision = $3, updated_at = $4 WHERE id = $1",
            run["id"],
            req.to_version,
            revision,
            now,
        )
        await record_history(
            tx,
            namespace=namespace,
            run_id=run["id"],
            entity="run",
            entity_id=run["id"],
            from_status=run["status"],
            to_status=run["status"],
            reason=reason,
            revision=revision,
            now=now,
        )
        tx.publish(run_topic(run["id"]))
    # workers of the new version may claim the queued ones at once
    for pool in sorted({r["pool"] for r in movable if r["status"] == RunStatus.QUEUED}):
        tx.publish(*queued_topics(namespace, req.workflow, req.to_version, pool))
    served = await served_triples(tx, namespace, live_since)
    unserved_pools = sorted(
        {r["pool"] for r in movable} - {p for w, v, p in served if (w, v) == _to(req)}
    )
    warning = None
    if unserved_pools:
        warning = (
            f"no connected worker serves workflow {req.workflow!r} version {req.to_version!r}"
            f" in pool {', '.join(map(repr, unserved_pools))}; its migrated runs wait until one"
            " does"
        )
    moved = await tx.fetch(
        f"SELECT * FROM runs WHERE id {tx.in_array(1)} ORDER BY created_at, id",
        tx.array([r["id"] for r in movable]),
    )
    return MigrateRunsResponse(
        migrated=[run_summary(r) for r in moved],
        skipped=skipped,
        has_more=has_more,
        to_version_served=not unserved_pools,
        warning=warning,
    )


def _to(req: MigrateRunsRequest) -> tuple[str, str]:
    return (req.workflow, req.to_version)


def _why_not(status: str) -> str:
    if status == RunStatus.RUNNING:
        return "running on a worker: pause it (it stops at its next task boundary), then migrate"
    if status == RunStatus.AWAITING_TASK:
        return "a remote task attempt is in flight: migrate it once the attempt answers"
    if status == RunStatus.CLEANING_UP:
        return "cleaning up after its cancellation or timeout: it ends on its version"
    return f"the run has ended ({status})"


async def check_versions(tx: Tx, namespace: str, req: MigrateRunsRequest) -> None:
    """Refuse a move to the same version, or to one never seen (a typo strands runs)."""
    if req.from_version == req.to_version:
        raise ConflictError(
            f"runs of version {req.from_version!r} are on it already: name another version",
            details={"from_version": req.from_version, "to_version": req.to_version},
        )
    for version in (req.from_version, req.to_version):
        if not await _known(tx, namespace, req.workflow, version):
            raise NotFoundError("workflow version", f"{req.workflow} {version}")


async def _known(tx: Tx, namespace: str, workflow: str, version: str) -> bool:
    """Whether a run, a worker (live or not) or an endpoint ever named the version."""
    run = await tx.fetchrow(
        "SELECT id FROM runs WHERE namespace = $1 AND workflow = $2 AND version = $3 LIMIT 1",
        namespace,
        workflow,
        version,
    )
    if run is not None:
        return True
    return any(
        (w, v) == (workflow, version)
        for w, v, _ in await worker_triples(tx, namespace, live_since=0)
    ) or any(
        (w, v) == (workflow, version)
        for endpoint in await list_endpoints(tx, "workflows", namespace)
        for w, v, _ in endpoint.workflows
    )


async def selected_runs(
    tx: Tx, namespace: str, req: MigrateRunsRequest, limit: int, *, lock: bool
) -> tuple[list[Row], list[SkippedRun], bool]:
    """The runs the filter matches: movable ones, those left alone, and whether more move.

    The movable rows come up to `limit` (locked if `lock`), the others as skipped runs.

    Runs named by id are all read (and all must move: `_check_named`). Otherwise the
    movable ones are read on their own, up to `limit` + 1 (whether more are left), so
    runs that cannot move (running, say) neither take their places in the page nor
    hide them; up to `MAX_MIGRATED_PER_CALL` of those are listed as skipped.
    """
    movable, unmovable = await _selected(tx, namespace, req, limit, tx.lock_rows if lock else "")
    for run in movable[limit:] if lock else ():  # locked to tell there is more, left as it is
        claims_look_again(tx, run)
    skipped = [
        SkippedRun(run_id=r["id"], status=r["status"], reason=_why_not(r["status"]))
        for r in unmovable
    ]
    return movable[:limit], skipped, len(movable) > limit


async def _selected(
    tx: Tx, namespace: str, req: MigrateRunsRequest, limit: int, lock: str
) -> tuple[list[Row], list[Row]]:
    args: list[object] = [namespace, req.workflow, req.from_version]
    clauses = ["namespace = $1", "workflow = $2", "version = $3"]
    wanted = req.filter
    if wanted.status is not None:
        args.append(tx.array([s.value for s in wanted.status]))
        clauses.append(f"status {tx.in_array(len(args))}")
    if wanted.reference_id is not None:
        args.append(wanted.reference_id)
        clauses.append(f"reference_id = ${len(args)}")

    async def matching(clause: str, values: list[object], limit: int, lock: str) -> list[Row]:
        more = [*args, *values, limit]
        return await tx.fetch(
            f"SELECT * FROM runs WHERE {' AND '.join([*clauses, clause])}"
            f" ORDER BY created_at, id LIMIT ${len(more)}{lock}",
            *more,
        )

    n = len(args)
    if wanted.run_ids is not None:
        ids = [tx.array(wanted.run_ids)]
        named = await matching(f"id {tx.in_array(n + 1)}", ids, len(wanted.run_ids), lock)
        _check_named(req, named)
        return named, []
    migratable = sorted(s.value for s in MIGRATABLE_STATUSES)
    movable = await matching(
        f"status {tx.in_array(n + 1)}", [tx.array(migratable)], limit + 1, lock
    )
    # named outright (running, awaiting_task, cleaning_up), not as "none of the others",
    # so the status index serves it with a million ended runs of the workflow
    stuck = [tx.array(sorted({s.value for s in RunStatus} - {*TERMINAL, *migratable}))]
    unmovable = await matching(f"status {tx.in_array(n + 1)}", stuck, MAX_MIGRATED_PER_CALL, "")
    return movable, unmovable


def _check_named(req: MigrateRunsRequest, rows: list[Row]) -> None:
    """Runs named by id must all exist on the old version and be movable: else nothing moves."""
    assert req.filter.run_ids is not None
    found = {r["id"]: r for r in rows}
    for run_id in req.filter.run_ids:
        run = found.get(run_id)
        if run is None:
            raise ConflictError(
                f"run {run_id} is not a run of workflow {req.workflow!r} version"
                f" {req.from_version!r} that the filter matches",
                details={"run_id": run_id},
            )
        if run["status"] not in MIGRATABLE_STATUSES:
            raise IllegalTransitionError("run", run_id, run["status"], "migrated")
