"""`Execution`: the task records a run holds, and how they are flushed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio

from aiki_core import (
    ClaimedRun,
    ConsoleLogger,
    IdentityCodec,
    LogLevel,
    RecordTaskRequest,
    RecordTaskResponse,
    RunSummary,
    TaskId,
    TaskStatus,
)
from aiki_worker._execution import Execution

NOW = datetime(2030, 1, 1, tzinfo=UTC)


class SlowApi:
    """Records task attempts, each after a short delay, as a server round trip takes."""

    codec = IdentityCodec()
    log = ConsoleLogger(LogLevel.ERROR)

    def __init__(self) -> None:
        self.written: list[str] = []

    async def record_task(self, run_id: str, request: RecordTaskRequest) -> RecordTaskResponse:
        await anyio.sleep(0.02)
        self.written.append(request.address)
        return RecordTaskResponse(task_id=TaskId(request.address), status=request.status)


def claim() -> ClaimedRun:
    run = RunSummary.model_validate(
        {
            "id": "run-1",
            "namespace": "default",
            "workflow": "wf",
            "version": "1",
            "status": "running",
            "pool": "default",
            "revision": 1,
            "attempt": 1,
            "created_at": NOW,
            "updated_at": NOW,
        }
    )
    return ClaimedRun(run=run, input=None)


def completed(address: str) -> RecordTaskRequest:
    fields: dict[str, Any] = {
        "revision": 1,
        "name": "t",
        "address": address,
        "occurrence": 0,
        "attempt": 1,
        "status": TaskStatus.COMPLETED,
        "result": 1,
    }
    return RecordTaskRequest.model_validate(fields)


async def test_a_flush_waits_for_the_one_under_way() -> None:
    api = SlowApi()
    execution = Execution(api, claim(), api.log, None)  # type: ignore[arg-type]
    execution.defer_task(completed("t:a"))
    seen_by_second: list[list[str]] = []

    async def first() -> None:
        await execution.flush_tasks()

    async def second() -> None:
        await anyio.sleep(0.005)  # the first flush is on its way by now
        await execution.flush_tasks()
        seen_by_second.append(list(api.written))

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        tg.start_soon(second)
    # what the second flush's caller may depend on was on record when it returned
    assert seen_by_second == [["t:a"]]


async def test_held_records_travel_with_the_transition() -> None:
    api = SlowApi()
    execution = Execution(api, claim(), api.log, None)  # type: ignore[arg-type]
    execution.defer_task(completed("t:a"))
    execution.defer_task(completed("t:b"))
    assert [r.address for r in await execution.take_deferred()] == ["t:a", "t:b"]
    assert await execution.take_deferred() == []
    assert api.written == []
