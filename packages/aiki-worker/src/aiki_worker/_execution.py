"""`Execution`: what a version gets to execute one claimed run (a `RunExecution`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiki_core import (
        ClaimedRun,
        Logger,
        PayloadCodec,
        RecordTaskRequest,
        RecordTaskResponse,
        WorkerApi,
    )


@dataclass(frozen=True, slots=True)
class Execution:
    """One claimed run on this worker."""

    api: WorkerApi
    claim: ClaimedRun
    log: Logger
    context: object

    @property
    def codec(self) -> PayloadCodec:
        """The client's codec."""
        return self.api.codec

    async def record_task(self, request: RecordTaskRequest) -> RecordTaskResponse:
        """Record a task attempt through the client."""
        return await self.api.record_task(self.claim.run.id, request)
