"""Dry runs of a migration, replayed by a live worker that serves the new version.

A dry-run migration (`dry_run=True`) selects its runs as a migration does, but moves
nothing. It picks one live polling worker of the namespace that serves the new
version (one that serves the old one too, if any), writes a job row per run for it
(`dry_run_jobs`) and wakes the worker's directives poll (`worker_topic`). The poll
hands the worker each job with what a claim of the run would carry, its version set
to the new one; the worker replays it without side effects and reports
(`POST /dry-runs/{job_id}/report`), which wakes the request (`dry_run_topic`; on
PostgreSQL across replicas). The request answers once every job is reported, or its
`wait` ran out, and deletes its rows; the rows of a request that died expire and
the retention sweep deletes them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio
from pydantic import ValidationError

from aiki_core import NoDryRunWorkerError, NotFoundError, PayloadValidationError
from aiki_core.wire import (
    MAX_DRY_RUNS_PER_CALL,
    MAX_DRY_RUNS_PER_POLL,
    DryRunAnswer,
    DryRunJob,
    DryRunReceipt,
    MigrateRunsResponse,
    NotReplayed,
    to_millis,
)
from aiki_server._claims import claimed_runs
from aiki_server._logs import component
from aiki_server._notify import dry_run_topic, worker_topic
from aiki_server._rows import new_id
from aiki_server._versions import check_versions, selected_runs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiki_core.wire import ClaimedRun, MigrateRunsRequest
    from aiki_server._clock import Clock
    from aiki_server._limits import Limits
    from aiki_server._notify import WakeHub
    from aiki_server._storage._database import Database, Row, Tx

_EXPIRY_MARGIN_MS = 60_000
"""How long past its request's wait a job row is kept before the sweep may delete it."""

_log = component("dry_runs")


class DryRuns:
    """Hands dry runs to workers and collects their reports."""

    def __init__(self, db: Database, hub: WakeHub, clock: Clock, limits: Limits) -> None:
        self._db = db
        self._hub = hub
        self._clock = clock
        self._limits = limits

    async def dry_run(self, namespace: str, req: MigrateRunsRequest) -> MigrateRunsResponse:
        """Have a worker replay the runs `req` selects on `to_version`; its reports."""
        now = self._clock()
        limit = min(req.limit, MAX_DRY_RUNS_PER_CALL)
        async with self._db.reader() as tx:
            await check_versions(tx, namespace, req)
            runs, skipped, has_more = await selected_runs(tx, namespace, req, limit, lock=False)
            worker = await _replaying_worker(tx, namespace, req, now - self._limits.claim_idle_ms)
        if worker is None:
            raise NoDryRunWorkerError(req.workflow, req.to_version)
        request_id = new_id()
        jobs = {new_id(): run["id"] for run in runs}
        deadline = now + to_millis(req.wait)
        answers: dict[str, str] = {}
        try:
            if jobs:
                answers = await self._handed(namespace, request_id, worker, req, jobs, deadline)
        finally:
            with anyio.CancelScope(shield=True):
                await self._db.write(lambda tx: _forget(tx, request_id))
        reports = []
        not_replayed = []
        for job_id, run_id in jobs.items():
            answer = answers.get(job_id)
            if answer is None:
                reason = f"worker {worker!r} did not report its replay within {req.wait}"
                not_replayed.append(NotReplayed(run_id=run_id, reason=reason))
                continue
            try:
                said = DryRunAnswer.model_validate_json(answer)
            except ValidationError as exc:  # stored by another version of the server, say
                _log.error("a stored dry-run answer is unreadable", {"error": repr(exc)})
                said = DryRunAnswer(worker_id=worker, failure="its stored answer is unreadable")
            if said.report is not None:
                reports.append(said.report)
            else:
                reason = f"the replay on worker {worker!r} failed: {said.failure}"
                not_replayed.append(NotReplayed(run_id=run_id, reason=reason))
        return MigrateRunsResponse(
            migrated=[],
            skipped=skipped,
            has_more=has_more,
            to_version_served=True,
            dry_runs=reports,
            not_replayed=not_replayed,
        )

    async def _handed(
        self,
        namespace: str,
        request_id: str,
        worker: str,
        req: MigrateRunsRequest,
        jobs: dict[str, str],
        deadline: int,
    ) -> dict[str, str]:
        """Write the jobs, wake the worker, and wait for its answers (job id -> answer)."""
        now = self._clock()

        async def hand(tx: Tx) -> None:
            await tx.executemany(
                "INSERT INTO dry_run_jobs (id, namespace, request_id, worker_id, run_id,"
                " version, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                [
                    (job_id, namespace, request_id, worker, run_id, req.to_version, now, expires)
                    for job_id, run_id in jobs.items()
                ],
            )
            tx.publish(worker_topic(namespace, worker))

        expires = deadline + _EXPIRY_MARGIN_MS
        handed = False
        while True:
            # subscribed before the jobs are written, and before each look: no report is missed
            with self._hub.subscribe(dry_run_topic(request_id)) as subscription:
                if not handed:
                    await self._db.write(hand)
                    handed = True
                # counted on each wake, read once: an answer may be a report of thousands
                # of calls, and re-reading them all on each report read the whole anew
                async with self._db.reader() as tx:
                    row = await tx.fetchrow(
                        "SELECT COUNT(*) AS n FROM dry_run_jobs"
                        " WHERE request_id = $1 AND answer IS NOT NULL",
                        request_id,
                    )
                    answered = 0 if row is None else int(row["n"])
                    remaining = deadline - self._clock()
                    if answered == len(jobs) or remaining <= 0:
                        rows = await tx.fetch(
                            "SELECT id, answer FROM dry_run_jobs"
                            " WHERE request_id = $1 AND answer IS NOT NULL",
                            request_id,
                        )
                        return {row["id"]: row["answer"] for row in rows}
                await subscription.wait(remaining / 1000)

    async def report(self, namespace: str, job_id: str, answer: DryRunAnswer) -> DryRunReceipt:
        """Store a worker's answer to its job, and wake the request that waits for it."""

        async def store(tx: Tx) -> DryRunReceipt:
            job = await tx.fetchrow(
                "SELECT request_id, worker_id, run_id, version FROM dry_run_jobs"
                " WHERE id = $1 AND namespace = $2",
                job_id,
                namespace,
            )
            if job is None or job["worker_id"] != answer.worker_id:
                raise NotFoundError("dry-run job", job_id)
            report = answer.report
            if report is not None and (report.run_id, report.version) != (
                job["run_id"],
                job["version"],
            ):
                raise PayloadValidationError(
                    f"dry-run job {job_id} replays run {job['run_id']} on version"
                    f" {job['version']!r}; the report is of run {report.run_id} on"
                    f" {report.version!r}"
                )
            await tx.execute(
                "UPDATE dry_run_jobs SET answer = $2 WHERE id = $1",
                job_id,
                answer.model_dump_json(),
            )
            tx.publish(dry_run_topic(job["request_id"]))
            return DryRunReceipt(job_id=job_id, run_id=job["run_id"])

        return await self._db.write(store)


async def pending_jobs(
    tx: Tx, namespace: str, worker_id: str, in_hand: Sequence[str], now: int, most: int
) -> list[DryRunJob]:
    """The dry-run jobs of the worker not answered, nor expired, nor in its hands (`most`).

    Each carries what a claim of its run carries (the same code builds it), on the
    version to replay. A run whose claim cannot be built is left out (its request
    lists it as not replayed), and holds up none of the others.
    """
    if most <= 0:  # the worker has no room for another replay now
        return []
    args: list[object] = [namespace, worker_id, now]
    others = ""
    if in_hand:
        args.append(tx.array(list(in_hand)))
        others = f" AND NOT (j.id {tx.in_array(4)})"
    rows = await tx.fetch(
        "SELECT j.id AS job_id, j.version AS job_version, r.* FROM dry_run_jobs j"
        " JOIN runs r ON r.id = j.run_id"
        " WHERE j.namespace = $1 AND j.worker_id = $2 AND j.answer IS NULL"
        f" AND j.expires_at >= $3{others}"
        f" ORDER BY j.created_at, j.id LIMIT {min(most, MAX_DRY_RUNS_PER_POLL)}",
        *args,
    )
    if not rows:
        return []
    try:
        claims = await claimed_runs(tx, rows, first_claims=set())
    except Exception:  # found and logged one by one below
        claims = []
        for row in rows:
            claims += await _claim_or_none(tx, row)
    by_run = {claim.run.id: claim for claim in claims}
    return [
        DryRunJob(
            job_id=row["job_id"],
            run=claim.model_copy(
                update={"run": claim.run.model_copy(update={"version": row["job_version"]})}
            ),
        )
        for row in rows
        if (claim := by_run.get(row["id"])) is not None
    ]


async def _claim_or_none(tx: Tx, row: Row) -> list[ClaimedRun]:
    try:
        return list(await claimed_runs(tx, [row], first_claims=set()))
    except Exception as exc:
        _log.error(
            "a dry-run job's run cannot be handed out; it is left unreplayed",
            {"run_id": row["id"], "job_id": row["job_id"], "error": repr(exc)},
        )
        return []


async def _replaying_worker(
    tx: Tx, namespace: str, req: MigrateRunsRequest, live_since: int
) -> str | None:
    """A live worker serving `to_version` (one serving `from_version` too first), or None."""
    rows = await tx.fetch(
        "SELECT id, capabilities FROM workers WHERE namespace = $1 AND last_seen_at >= $2"
        " ORDER BY last_seen_at DESC, id",
        namespace,
        live_since,
    )
    serving = []
    for row in rows:
        versions = {(w, v) for w, v, _ in json.loads(row["capabilities"])}
        if (req.workflow, req.to_version) in versions:
            serving.append(((req.workflow, req.from_version) not in versions, row["id"]))
    return min(serving, key=lambda found: found[0])[1] if serving else None


async def _forget(tx: Tx, request_id: str) -> None:
    await tx.execute("DELETE FROM dry_run_jobs WHERE request_id = $1", request_id)


async def delete_expired_jobs(tx: Tx, now: int, batch: int) -> int:
    """Delete up to `batch` job rows of requests that died before they answered."""
    return await tx.execute(
        "DELETE FROM dry_run_jobs WHERE id IN (SELECT id FROM dry_run_jobs"
        f" WHERE expires_at < $1 ORDER BY expires_at LIMIT $2{tx.skip_locked})",
        now,
        batch,
    )
