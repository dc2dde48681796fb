"""What the dashboard's pages compute from a `RunDetail`: waits in words, the timeline, payloads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiki_core import ErrorInfo, RunStatus, TaskStatus
from aiki_core.wire import PendingWait, RunDetail, TaskAttemptRecord, TaskRecord
from aiki_server._dashboard._views import duration, is_sealed, timeline, waiting_for

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def run(**fields: object) -> RunDetail:
    base: dict[str, object] = {
        "id": "R1",
        "namespace": "default",
        "workflow": "orders",
        "version": "1.2.0",
        "status": RunStatus.RUNNING,
        "pool": "default",
        "revision": 1,
        "attempt": 1,
        "created_at": T0,
        "updated_at": T0,
    }
    return RunDetail.model_validate({**base, **fields})


def attempt(n: int, start_s: float, end_s: float, *, error: str | None = None) -> TaskAttemptRecord:
    return TaskAttemptRecord(
        attempt=n,
        status=TaskStatus.AWAITING_RETRY if error else TaskStatus.COMPLETED,
        started_at=T0 + timedelta(seconds=start_s),
        finished_at=T0 + timedelta(seconds=end_s),
        error=None if error is None else ErrorInfo(type="builtins.ConnectionError", message=error),
    )


def test_waits_are_said_in_words() -> None:
    due = T0 + timedelta(hours=1)
    sleeping = run(
        status=RunStatus.SLEEPING, waits=[PendingWait(kind="sleep", name="cool-off", due_at=due)]
    )
    assert waiting_for(sleeping) == ["sleeping until 2026-12-05 13:00:00 UTC (cool-off)"]
    event = PendingWait(kind="event", name="approved")
    awaiting = run(status=RunStatus.AWAITING_EVENT, waits=[event])
    assert waiting_for(awaiting) == ["waiting for event 'approved'"]
    reason = "no connected worker serves workflow 'orders' version '1.2.0' in pool 'default'"
    assert waiting_for(run(status=RunStatus.QUEUED, pending_reason=reason)) == [reason]
    remote = "waiting for task 'resize' (attempt 1) on endpoint https://thumbs.test/aiki/"
    task = PendingWait(kind="task", address="a" * 64, occurrence=0)
    long_task = run(status=RunStatus.AWAITING_TASK, waits=[task], pending_reason=remote)
    assert waiting_for(long_task) == [remote]  # said once: the reason names the endpoint
    assert waiting_for(run()) == []


def test_the_timeline_places_each_attempt_and_marks_failed_ones() -> None:
    task = TaskRecord(
        id="T1",
        name="charge-card",
        address="a1",
        occurrence=0,
        status=TaskStatus.COMPLETED,
        created_at=T0,
        finished_at=T0 + timedelta(seconds=10),
        attempts=[attempt(1, 0, 2, error="timed out"), attempt(2, 6, 10)],
    )
    finished = run(status=RunStatus.COMPLETED, tasks=[task], finished_at=T0 + timedelta(seconds=10))
    chart = timeline(finished, now=T0 + timedelta(hours=1))
    (lane,) = chart.lanes
    assert (lane.name, lane.attempts) == ("charge-card", 2)
    first, second = lane.bars
    assert (first.left, first.width, first.status) == (0.0, 20.0, "failed")
    assert "ConnectionError: timed out" in first.label
    assert (second.left, second.width, second.status) == (60.0, 40.0, "completed")
    assert chart.ticks[-1] == (100.0, "10.0 s")


def test_sealed_payloads_are_told_from_readable_ones() -> None:
    assert is_sealed("aiki:v1:k2026:" + "A" * 40)
    assert not is_sealed("aiki is a martial art")
    assert not is_sealed({"order": "aiki:v1:k:AAAA"})


def test_durations_read_in_the_units_that_matter() -> None:
    assert [duration(ms) for ms in (850, 4200, 185_000, 7_500_000, 190_000_000)] == [
        "850 ms",
        "4.2 s",
        "3 min 5 s",
        "2 h 5 min",
        "2 d 4 h",
    ]
