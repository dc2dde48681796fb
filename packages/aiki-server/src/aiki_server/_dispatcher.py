"""The push dispatcher: claims queued runs for workflow endpoints and pushes them.

Every replica runs one, beside the timer daemon. For each workflow endpoint whose
`retry_at` has passed, it claims queued runs of the endpoint's (workflow, version,
pool) triples through the normal claim machinery (`Claims.claim_now`: flow control,
priorities and fencing apply), under the worker id `endpoint:<endpoint id>`, while
this replica has fewer than the endpoint's `max_in_flight` pushes to it in flight.
Each claimed run is pushed as a `PushedRun` (signed with every unexpired secret) in
a task of its own; the endpoint heartbeats and transitions the run through the API,
as a pulling worker does, and answers once it let the run go.

A push that fails (no connection, a timeout, a non-2xx answer, an answer that is not
a `PushedRunAnswer`) gives the run back to the queue, fenced by its claim's revision
(a run that moved on meanwhile is left alone), without counting against the run's
claims; the failure is counted on the endpoint's row (`_push_health`: back-off, then
the open circuit and its single trial). An endpoint that answered but still holds
the run has its claim released the same way, so the run does not wait for its claim
to go idle.

The dispatcher looks again when runs are queued (the `QUEUE` topic), when one of its
pushes ends, and every `tick` seconds (a back-off that passed, a new endpoint); while
there is no workflow endpoint at all, only every `tick`. One
endpoint's failure (a bad row, a claim that fails) is logged with its id, counted
(`aiki_pushes{outcome="error"}`) and confined to it; a failed pass is tried again at
the next tick. At shutdown the pushes in flight are cancelled and their runs released.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
from pydantic import ValidationError

from aiki_core import RunStatus
from aiki_core.wire import PushedRun, PushedRunAnswer
from aiki_server._endpoints import ENDPOINT_COLUMNS
from aiki_server._endpoints import endpoint as parsed_endpoint
from aiki_server._logs import component
from aiki_server._notify import QUEUE
from aiki_server._push_client import PushClient
from aiki_server._push_health import (
    OPEN_AFTER,
    PushBackoff,
    give_back_trial,
    record_failure,
    record_success,
    take_trial,
)

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from aiki_core.wire import ClaimedRun, RunSummary
    from aiki_server._claims import Claims
    from aiki_server._clock import Clock
    from aiki_server._endpoints import Endpoint
    from aiki_server._notify import WakeHub
    from aiki_server._storage._database import Database
    from aiki_server._worker_writes import WorkerWrites

_log = component("dispatcher")

KIND = "workflows"
"""The endpoint kind this dispatcher pushes to (the `kind` label of its metrics)."""
_MARGIN_MS = 5_000
"""The most of an endpoint's timeout kept back from `answer_within`, for the answer's way."""
_RELEASE_WITHIN = 5.0
"""Seconds a release at shutdown may take before the run is left to its idle timeout."""


def endpoint_worker_id(endpoint_id: str) -> str:
    """The worker id runs pushed to an endpoint are claimed under."""
    return f"endpoint:{endpoint_id}"


def answer_within(timeout_ms: int) -> timedelta:
    """How long an endpoint of `timeout_ms` has to answer: its timeout less a margin."""
    return timedelta(milliseconds=timeout_ms - min(_MARGIN_MS, timeout_ms // 5))


class Dispatcher:
    """Pushes queued runs to workflow endpoints until cancelled (`run_forever`)."""

    def __init__(
        self,
        db: Database,
        hub: WakeHub,
        clock: Clock,
        claims: Claims,
        writes: WorkerWrites,
        *,
        backoff: PushBackoff | None = None,
        tick: float = 1.0,
        client: PushClient | None = None,
    ) -> None:
        self._db = db
        self._hub = hub
        self._clock = clock
        self._claims = claims
        self._writes = writes
        self._backoff = backoff or PushBackoff()
        self._tick = tick
        self._client = client
        self._in_flight: Counter[str] = Counter()
        """Endpoint id -> this replica's pushes to it in flight."""
        self._held: dict[str, int] = {}
        """Endpoint id -> the `retry_at` this replica last wrote on its row: a pass that
        read the row before that write holds back all the same."""
        self._wake = anyio.Event()

    async def run_forever(self) -> None:
        """Pass after pass; a failed pass is logged and tried again at the next tick."""
        client = self._client or PushClient()
        try:
            async with anyio.create_task_group() as pushes:
                pushes.start_soon(self._watch_queue)
                while True:
                    self._wake = anyio.Event()
                    endpoints = 1  # after a failed pass: look again at the next wake-up
                    try:
                        endpoints = await self._pass(pushes, client)
                    except Exception as exc:
                        self._db.metrics.pushed(KIND, "error")
                        _log.error("dispatcher pass failed; trying again", {"error": repr(exc)})
                    with anyio.move_on_after(self._tick):
                        # without endpoints a queued run concerns no dispatcher: a server
                        # that pushes nothing reads one row set a tick, not one a queued run
                        await (self._wake.wait() if endpoints else anyio.sleep_forever())
        finally:
            if self._client is None:
                with anyio.CancelScope(shield=True):
                    await client.aclose()

    async def _watch_queue(self) -> None:
        """Wake the dispatcher whenever runs may have been queued."""
        while True:
            with self._hub.subscribe(QUEUE) as subscription:
                await subscription.wait(3600)
            self._wake.set()

    async def _pass(self, pushes: TaskGroup, client: PushClient) -> int:
        """Dispatch to each workflow endpoint; how many there are."""
        # rows, each parsed on its own: a row that does not parse stops only itself
        async with self._db.reader() as tx:
            rows = await tx.fetch(
                f"SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE kind = $1 ORDER BY id", KIND
            )
        now = self._clock()
        ids = {row["id"] for row in rows}
        self._held = {key: at for key, at in self._held.items() if key in ids and at > now}
        for row in rows:
            try:
                await self._dispatch(parsed_endpoint(row), pushes, client)
            except Exception as exc:
                self._db.metrics.pushed(KIND, "error")
                _log.error(
                    "dispatching to an endpoint failed; trying again",
                    {"endpoint_id": row["id"], "error": repr(exc)},
                )
        return len(rows)

    async def _dispatch(self, endpoint: Endpoint, pushes: TaskGroup, client: PushClient) -> None:
        """Claim and push as many runs as the endpoint may take now."""
        now = self._clock()
        retry_at = max(endpoint.retry_at or 0, self._held.get(endpoint.id, 0))
        if not endpoint.workflows or retry_at > now:
            return
        in_flight = self._in_flight[endpoint.id]
        trial: int | None = None
        if endpoint.failures >= OPEN_AFTER:  # the circuit is open: one trial, one replica
            if in_flight:
                return
            trial = await take_trial(
                self._db, endpoint.id, now, endpoint.timeout_ms + self._backoff.cool_off_ms
            )
            if trial is None:
                return
            room = 1
        else:
            room = endpoint.max_in_flight - in_flight
            if room <= 0:
                return
        secrets = endpoint.active_secrets(now)
        if not secrets:
            await self._failed(endpoint.id, "no unexpired secret to sign with", None)
            return
        claimed: list[ClaimedRun] = []
        try:
            claimed = await self._claims.claim_now(
                endpoint.namespace, endpoint_worker_id(endpoint.id), endpoint.workflows, room
            )
        finally:
            if not claimed and trial is not None:  # nothing to try it with
                await give_back_trial(self._db, endpoint.id, trial, now)
        for run in claimed:
            self._in_flight[endpoint.id] += 1
            pushes.start_soon(self._push, endpoint, run, client)

    async def _push(self, endpoint: Endpoint, claimed: ClaimedRun, client: PushClient) -> None:
        """Push one claimed run; give it back to the queue unless the endpoint let it go."""
        run = claimed.run
        ids = {"endpoint_id": endpoint.id, "run_id": run.id, "namespace": endpoint.namespace}
        pushing = f"push to endpoint {endpoint.id}"
        settled = False  # the run's fate is written: released, or left to the endpoint
        counted = False  # the failure is on the endpoint's row
        try:
            pushed = PushedRun(
                claim=claimed,
                worker_id=endpoint_worker_id(endpoint.id),
                answer_within=answer_within(endpoint.timeout_ms),
            )
            result = await client.push(
                endpoint.url,
                pushed.model_dump_json().encode(),
                endpoint.active_secrets(self._clock()),
                endpoint.timeout_ms / 1000,
            )
            outcome: str = result.outcome
            error = result.error
            if result.ok and not _answers(result.answer, run.id):
                outcome, error = "invalid", "HTTP 2xx without a pushed run answer"
            self._db.metrics.pushed(KIND, outcome, result.seconds)
            if error is None:
                settled = True
                await self._pushed(endpoint, run)
                return
            # the back-off is written first: the released run wakes every dispatcher
            failures = await self._failed(endpoint.id, error, result.retry_after)
            counted = True
            released = await self._writes.release(
                endpoint.namespace, run.id, run.revision, f"{pushing} failed: {error}"
            )
            settled = True
            _log.warn(
                "push failed; the run is back in the queue",
                {**ids, "error": error, "failures": failures, "released": released},
            )
        except Exception as exc:
            self._db.metrics.pushed(KIND, "error")
            _log.error("push failed in the server", {**ids, "error": repr(exc)})
            if not settled:
                # counted first, else the release wakes this dispatcher to push at once;
                # shielded as the release is, which a shutdown must not skip
                with anyio.move_on_after(_RELEASE_WITHIN, shield=True):
                    if not counted:
                        with contextlib.suppress(Exception):
                            await self._failed(endpoint.id, "the push failed in the server", None)
                await self._release_shielded(endpoint, run, f"{pushing} failed in the server")
        except BaseException:  # cancelled: the server is shutting down
            if not settled:
                await self._release_shielded(endpoint, run, f"{pushing} cut by a shutdown")
            raise
        finally:
            self._in_flight[endpoint.id] -= 1
            if not self._in_flight[endpoint.id]:
                del self._in_flight[endpoint.id]
            self._wake.set()

    async def _pushed(self, endpoint: Endpoint, run: RunSummary) -> None:
        """After a push the endpoint took: its row healthy, the run not held by the claim."""
        self._held.pop(endpoint.id, None)
        async with self._db.reader() as tx:
            health = await tx.fetchrow(
                "SELECT failures, retry_at FROM endpoints WHERE id = $1", endpoint.id
            )
            held = await tx.fetchrow(
                "SELECT 1 FROM runs WHERE id = $1 AND status = $2 AND revision = $3",
                run.id,
                RunStatus.RUNNING.value,
                run.revision,
            )
        if health is not None and (health["failures"] or health["retry_at"] is not None):
            await record_success(self._db, endpoint.id)
        reason = f"endpoint {endpoint.id} answered its push but still held the run"
        if held and await self._writes.release(endpoint.namespace, run.id, run.revision, reason):
            _log.warn(
                "the endpoint answered but still held the run; released",
                {"endpoint_id": endpoint.id, "run_id": run.id, "namespace": endpoint.namespace},
            )

    async def _failed(self, endpoint_id: str, error: str, retry_after: float | None) -> int:
        """Count a failed push on the endpoint's row; its failures in a row now."""
        after_ms = None if retry_after is None else int(retry_after * 1000)
        failures, retry_at = await record_failure(
            self._db, endpoint_id, self._clock(), error, after_ms, self._backoff
        )
        self._held[endpoint_id] = retry_at
        return failures

    async def _release_shielded(self, endpoint: Endpoint, run: RunSummary, reason: str) -> None:
        """Release the run's claim, even while cancelled; left to its idle timeout on failure."""
        with anyio.move_on_after(_RELEASE_WITHIN, shield=True):
            try:
                await self._writes.release(endpoint.namespace, run.id, run.revision, reason)
            except Exception as exc:
                _log.error(
                    "a pushed run could not be released; it waits for its claim to go idle",
                    {"endpoint_id": endpoint.id, "run_id": run.id, "error": repr(exc)},
                )


def _answers(body: bytes, run_id: str) -> bool:
    """Whether `body` is a `PushedRunAnswer` for the run."""
    try:
        return PushedRunAnswer.model_validate_json(body).run_id == run_id
    except ValidationError:
        return False
