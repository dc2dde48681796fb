"""Directives: a worker long-polls for what it must do with the runs it holds.

The heartbeat tells a worker that a run was cancelled, paused or taken from it, but
only once per heartbeat interval (30 s by default). The directives poll answers within
moments instead: each fencing move of a running run (`move_run`) and each pause
request or withdrawal publishes the topic of the worker that holds it
(`worker_topic`), and that worker's poll alone wakes and reads its runs again. The
worker sends the directive it follows for each run (`pausing`), so a pause it was
told of does not answer again and again.

The poll also hands the worker its dry-run jobs (`_dry_runs`): a dry run publishes
the worker's topic once it wrote them. So the poll stays open while the worker holds
no run, and an idle worker hears of a job within moments; the jobs it replays now
(`dry_runs` of the request) are not handed to it again.

The poll only reads: refreshing the claims stays the heartbeat's job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiki_core.wire import DirectivesResponse, RunDirective, RunLeaseStatus, to_millis
from aiki_server._dry_runs import pending_jobs
from aiki_server._notify import worker_topic
from aiki_server._worker_writes import lease_directives

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiki_core.wire import DirectivesRequest
    from aiki_server._clock import Clock
    from aiki_server._notify import WakeHub
    from aiki_server._storage._database import Database, Tx


class Directives:
    """Answers the directives polls of workers."""

    def __init__(self, db: Database, hub: WakeHub, clock: Clock) -> None:
        self._db = db
        self._hub = hub
        self._clock = clock

    async def poll(
        self,
        namespace: str,
        req: DirectivesRequest,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> DirectivesResponse:
        """The directives that differ from those the worker follows, and its new dry runs.

        It answers once there is one of either (dry-run jobs not in the worker's hands).

        Empty when `req.wait` ran out, or the worker hung up (`gone()`).
        """
        deadline = self._clock() + to_millis(req.wait)
        topic = worker_topic(namespace, req.worker_id)
        while True:
            # it reads again only when woken: every change of a directive publishes the topic
            with self._hub.subscribe(topic) as subscription:
                if gone is not None and await gone():
                    return DirectivesResponse(runs=[])
                async with self._db.reader() as tx:
                    changed = await _changed(tx, namespace, req)
                    jobs = await pending_jobs(
                        tx, namespace, req.worker_id, req.dry_runs, self._clock(), req.max_dry_runs
                    )
                remaining = deadline - self._clock()
                if changed or jobs or remaining <= 0:
                    return DirectivesResponse(runs=changed, dry_runs=jobs)
                await subscription.wait(remaining / 1000)


async def _changed(tx: Tx, namespace: str, req: DirectivesRequest) -> list[RunLeaseStatus]:
    if not req.runs:
        return []
    directives = await lease_directives(tx, namespace, req.worker_id, req.runs)
    changed: list[RunLeaseStatus] = []
    for run, directive in zip(req.runs, directives, strict=True):
        following = RunDirective.PAUSE if run.pausing else RunDirective.CONTINUE
        if directive is not following:
            changed.append(RunLeaseStatus(run_id=run.run_id, directive=directive))
    return changed
