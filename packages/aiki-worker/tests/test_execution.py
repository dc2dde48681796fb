"""`Execution`: the task records a run holds, how they go out, and how they are kept."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from aiki_core import (
    AikiError,
    ConsoleLogger,
    IdentityCodec,
    InvalidRequestError,
    LogLevel,
    ServerUnavailableError,
    TaskStatus,
)
from aiki_core.wire import ClaimedRun, RecordTaskRequest, RecordTaskResponse, RunSummary, TaskId
from aiki_worker._execution import Execution

NOW = datetime(2030, 1, 1, tzinfo=UTC)


class SlowApi:
    """Records task attempts, each after a short delay, as a server round trip takes.

    `refuse` maps addresses to the error their record gets; the first `unavailable`
    attempts fail as if the server were down.
    """

    codec = IdentityCodec()
    log = ConsoleLogger(LogLevel.ERROR)

    def __init__(self, refuse: dict[str, AikiError] | None = None, unavailable: int = 0) -> None:
        self.written: list[str] = []
        self.sending: list[list[str]] = []
        """The addresses in flight together, per send."""
        self.refuse = refuse or {}
        self.unavailable = unavailable
        self.attempts = 0
        self._in_flight: list[str] | None = None

    async def record_task(self, run_id: str, request: RecordTaskRequest) -> RecordTaskResponse:
        self.attempts += 1
        if self.unavailable:
            self.unavailable -= 1
            raise ServerUnavailableError("down")
        if request.address in self.refuse:
            raise self.refuse[request.address]
        if self._in_flight is None:
            self._in_flight = []
            self.sending.append(self._in_flight)
        self._in_flight.append(request.address)
        await anyio.sleep(0.02)
        self._in_flight = None
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


async def test_a_result_goes_out_at_once_and_later_ones_ride_on_the_next_send() -> None:
    api = SlowApi()
    async with anyio.create_task_group() as tg:
        execution = Execution(api, claim(), api.log, None, tg.start_soon)  # type: ignore[arg-type]
        execution.defer_task(completed("t:a"))
        # the workflow goes on; the send starts at its next turn
        await anyio.sleep(0.005)
        assert api.sending == [["t:a"]]
        execution.defer_task(completed("t:b"))
        execution.defer_task(completed("t:c"))
        await execution.flush_tasks()
    # b and c came in while a was under way: one send after it, side by side
    assert api.written == ["t:a", "t:b", "t:c"]
    assert api.sending == [["t:a"], ["t:b", "t:c"]]


async def test_a_flush_waits_for_the_one_under_way() -> None:
    api = SlowApi()
    async with anyio.create_task_group() as tg:
        execution = Execution(api, claim(), api.log, None, tg.start_soon)  # type: ignore[arg-type]
        execution.defer_task(completed("t:a"))
        await anyio.sleep(0.005)  # the send is on its way by now
        await execution.flush_tasks()
        # what the flush's caller may depend on was on record when it returned
        assert api.written == ["t:a"]


async def test_records_not_yet_sent_travel_with_the_transition() -> None:
    api = SlowApi()
    async with anyio.create_task_group() as tg:
        execution = Execution(api, claim(), api.log, None, tg.start_soon)  # type: ignore[arg-type]
        execution.defer_task(completed("t:a"))
        execution.defer_task(completed("t:b"))
        # the run transitions before its sender got a turn: no request of their own
        assert [r.address for r in await execution.take_deferred()] == ["t:a", "t:b"]
        assert await execution.take_deferred() == []
    assert api.written == []


async def test_a_record_refused_for_good_is_kept_for_the_transition_and_raised() -> None:
    api = SlowApi(refuse={"t:a": InvalidRequestError("not now")})
    async with anyio.create_task_group() as tg:
        execution = Execution(api, claim(), api.log, None, tg.start_soon)  # type: ignore[arg-type]
        execution.defer_task(completed("t:a"))
        with pytest.raises(InvalidRequestError):
            await execution.flush_tasks()
        with pytest.raises(InvalidRequestError):  # and again, at the run's next check
            await execution.flush_tasks()
        execution.defer_task(completed("t:b"))  # no send after a refusal
        assert [r.address for r in await execution.take_deferred()] == ["t:a", "t:b"]
    assert api.written == []


async def test_a_failure_that_may_pass_is_tried_again_until_acknowledged() -> None:
    api = SlowApi(unavailable=2)
    async with anyio.create_task_group() as tg:
        execution = Execution(api, claim(), api.log, None, tg.start_soon)  # type: ignore[arg-type]
        execution.defer_task(completed("t:a"))
        await execution.flush_tasks()
    assert api.written == ["t:a"]
    assert api.attempts == 3


async def test_a_send_cancelled_mid_way_keeps_its_records() -> None:
    api = SlowApi()
    async with anyio.create_task_group() as tg:
        execution = Execution(api, claim(), api.log, None, tg.start_soon)  # type: ignore[arg-type]
        execution.defer_task(completed("t:a"))
        await anyio.sleep(0.005)
        tg.cancel_scope.cancel()  # the worker stops while the record is on its way
    assert [r.address for r in await execution.take_deferred()] == ["t:a"]


async def test_a_server_down_past_the_retry_window_is_raised_and_the_record_kept() -> None:
    api = SlowApi(unavailable=1_000_000)
    async with anyio.create_task_group() as tg:
        execution = Execution(
            api,  # type: ignore[arg-type]
            claim(),
            api.log,
            None,
            tg.start_soon,
            retry_within=0.3,
        )
        execution.defer_task(completed("t:a"))
        with pytest.raises(ServerUnavailableError):
            await execution.flush_tasks()
        # tried more than once, then given up; the report still carries the record
        assert api.attempts > 1
        assert [r.address for r in await execution.take_deferred()] == ["t:a"]
