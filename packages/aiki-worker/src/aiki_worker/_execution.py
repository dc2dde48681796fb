"""`Execution`: what a version gets to execute one claimed run (a `RunExecution`).

Task records the version defers (completed results) wait here until the version
flushes them, before its next task starts, or until the run's transition, which
carries them: the last task of a run costs no request of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from aiki_core import MAX_TASKS_PER_TRANSITION, RunDirective

if TYPE_CHECKING:
    from aiki_core import (
        ClaimedRun,
        CreateWebhookRequest,
        CreateWebhookResponse,
        Logger,
        PayloadCodec,
        RecordTaskRequest,
        RecordTaskResponse,
        StartChildRequest,
        StartRunResponse,
        WorkerApi,
    )


class Execution:
    """One claimed run on this worker."""

    __slots__ = ("api", "claim", "context", "log", "pause_requested", "_deferred", "_flushing")

    def __init__(self, api: WorkerApi, claim: ClaimedRun, log: Logger, context: object) -> None:
        self.api = api
        self.claim = claim
        self.log = log
        self.context = context
        self.pause_requested = False
        """Set by a `pause` directive (a heartbeat's or a task record's answer)."""
        self._deferred: list[RecordTaskRequest] = []
        self._flushing = anyio.Lock()

    @property
    def codec(self) -> PayloadCodec:
        """The client's codec."""
        return self.api.codec

    async def record_task(self, request: RecordTaskRequest) -> RecordTaskResponse:
        """Record a task attempt through the client, now."""
        recorded = await self.api.record_task(self.claim.run.id, request)
        self.pause_requested = recorded.directive is RunDirective.PAUSE
        return recorded

    async def start_child(self, request: StartChildRequest) -> StartRunResponse:
        """Start a child run of this run through the client."""
        return await self.api.start_child(self.claim.run.id, request)

    async def create_webhook(self, request: CreateWebhookRequest) -> CreateWebhookResponse:
        """Mint a signed webhook URL for this run through the client."""
        return await self.api.create_webhook(self.claim.run.id, request)

    def defer_task(self, request: RecordTaskRequest) -> None:
        """Hold a task record for `flush_tasks` or the run's transition."""
        self._deferred.append(request)

    async def flush_tasks(self) -> None:
        """Record the held task records now, side by side; the first failure is raised.

        A flush already under way is waited for: whatever asked for this one may
        depend on the records it writes.
        """
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        held, self._deferred = self._deferred, []
        if len(held) == 1:
            await self.record_task(held[0])
            return
        failures: list[Exception] = []

        async def record(request: RecordTaskRequest) -> None:
            try:
                await self.record_task(request)
            except Exception as exc:  # raised below, as a single record's failure would be
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            for request in held:
                tg.start_soon(record, request)
        if failures:
            raise failures[0]

    async def take_deferred(self) -> list[RecordTaskRequest]:
        """The held task records, for the transition to carry (flushed first if too many)."""
        if len(self._deferred) > MAX_TASKS_PER_TRANSITION:
            await self.flush_tasks()
        held, self._deferred = self._deferred, []
        return held
