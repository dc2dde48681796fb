"""The directives poll: a worker learns within moments that a run it holds was stopped.

The worker keeps one long-poll open (`POST /api/v1/directives`) on the runs it holds,
each with the directive it follows now. The server answers as soon as one is
cancelled, taken away (claim lost, timed out) or has a pause requested or withdrawn,
and the worker follows the answer as it follows a heartbeat's: a cancelled run's code
is cancelled through its cancel scope, a pausing one stops at its next task boundary.
Heartbeats still refresh the claims, and still carry the same directives: a worker
whose poll fails learns them there.

A run claimed while the poll is open is not in it: the poll is asked again with it
(at most every `RESTART_SECONDS`, so a burst of claims costs few requests).

The poll stays open while the worker holds no run too: it also hands the worker the
dry-run jobs of a dry-run migration, which it replays and reports (`DryRunJobs`), as
many as it has room for; a replay that ends at capacity has the poll asked again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from aiki_core import AuthenticationError, NotFoundError
from aiki_core.wire import MAX_DRY_RUNS_IN_HAND, DirectivesRequest, WatchedRun
from aiki_worker._writes import asked_wait

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import timedelta

    from aiki_core import Logger
    from aiki_core.sdk import WorkerApi
    from aiki_core.wire import DirectivesResponse, RunLeaseStatus
    from aiki_worker._dry_run import DryRunJobs
    from aiki_worker._running import Held

RESTART_SECONDS = 0.2
"""The shortest time between two polls: how long a newly claimed run may wait to be in one."""


def follow(
    answers: list[RunLeaseStatus], asked: Mapping[str, Held], held: Mapping[str, Held]
) -> None:
    """Hand each answer's directive to its run, if the run is still held by the same claim.

    By the time an answer comes, a run may have been let go and claimed again: the new
    claim must not get the old one's answer.
    """
    for status in answers:
        one = asked.get(status.run_id)
        if one is not None and held.get(status.run_id) is one:
            one.direct(status.directive)


class DirectivesPoll:
    """Keeps a directives long-poll open on the runs in `held` (read anew each poll).

    The dry-run jobs it hands out go to `dry_runs`, replayed in the poll's task group.
    """

    def __init__(
        self,
        client: WorkerApi,
        worker_id: str,
        held: Mapping[str, Held],
        dry_runs: DryRunJobs,
        *,
        wait: timedelta,
        max_backoff: float,
        log: Logger,
        on_refused: Callable[[AuthenticationError], None],
    ) -> None:
        self._client = client
        self._worker_id = worker_id
        self._held = held
        self._dry_runs = dry_runs
        self._wait = wait
        self._max_backoff = max_backoff
        self._log = log
        self._on_refused = on_refused
        self._grew = anyio.Event()
        self._open = anyio.CancelScope()
        """The poll open now, dropped when a run is claimed."""
        dry_runs.on_room = self.held_more

    def held_more(self) -> None:
        """A run was claimed (or a replay made room): the poll open now is asked again."""
        self._grew.set()
        self._open.cancel()

    async def run_forever(self) -> None:
        """Poll until cancelled or the server refuses the key."""
        async with anyio.create_task_group() as replays:
            await self._poll(replays.start_soon)
            replays.cancel_scope.cancel()

    async def _poll(self, spawn: Callable[..., object]) -> None:
        backoff = 0.0
        missing = False
        last = -RESTART_SECONDS
        while True:
            await anyio.sleep_until(last + RESTART_SECONDS)
            last = anyio.current_time()
            self._grew = anyio.Event()
            # a run told to stop already may take a while to let go (its report is retried):
            # asking about it again would be answered at once, over and over
            asked = {run_id: one for run_id, one in self._held.items() if one.directive is None}
            request = DirectivesRequest(
                worker_id=self._worker_id,
                runs=[
                    WatchedRun(
                        run_id=run_id,
                        revision=one.claim.run.revision,
                        pausing=one.execution.pause_requested,
                    )
                    for run_id, one in asked.items()
                ],
                wait=self._wait,
                dry_runs=sorted(self._dry_runs.in_hand)[:MAX_DRY_RUNS_IN_HAND],
                max_dry_runs=self._dry_runs.room,
            )
            try:
                answer = await self._ask(request)
            except AuthenticationError as exc:
                self._on_refused(exc)
                return
            except NotFoundError:
                # an older server (a replica not yet upgraded, say) or a proxy: the heartbeats
                # carry the directives meanwhile, and the poll is asked again after a while
                if not missing:
                    self._log.info("the server has no directives poll; heartbeats carry directives")
                missing = True
                await anyio.sleep(self._max_backoff)
                continue
            except Exception as exc:  # the heartbeats carry the directives meanwhile
                backoff = min(max(backoff * 2, 0.1), self._max_backoff)
                wait = max(backoff, asked_wait(exc) or 0.0)
                self._log.warn("directives poll failed", {"error": str(exc), "again_in": wait})
                await anyio.sleep(wait)
                continue
            backoff, missing = 0.0, False
            if answer is None:
                continue
            follow(answer.runs, asked, self._held)
            self._dry_runs.take(answer.dry_runs, spawn)
            if not (asked or answer.runs or answer.dry_runs or self._grew.is_set()):
                if anyio.current_time() - last < self._wait.total_seconds() / 2:
                    # an idle poll answered empty long before its wait: a server that holds
                    # no idle polls (an older one); ask again once a run is claimed
                    await self._grew.wait()

    async def _ask(self, request: DirectivesRequest) -> DirectivesResponse | None:
        """The poll's answer, or None when a run was claimed meanwhile (the poll is dropped)."""
        with anyio.CancelScope() as self._open:
            if self._grew.is_set():
                return None
            return await self._client.directives(request)
        return None
