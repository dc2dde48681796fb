"""End to end, execution control: sleeps, events, children, cancel, pause and resume.

A real server process and a real worker process (`tests/e2e_app.py`), on SQLite and
on PostgreSQL. A waiting run holds no worker: it is suspended, let go, and replayed
when what it waits for arrives.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from aiki_core import RunStatus, TaskStatus, WorkflowCancelledError
from e2e_app import (
    Approval,
    Family,
    Nap,
    Pausable,
    Wait,
    approval_v1,
    approved,
    both_events_v1,
    family_v1,
    pausable_v1,
    shipped,
    sleeper_v1,
    webhook_v1,
)
from e2e_support import Stack, open_stack

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from aiki_core.sdk import WorkflowRunHandle
    from aiki_core.wire import RunDetail
    from live_processes import LiveProcesses

RESULT_TIMEOUT = timedelta(seconds=30)


@pytest.fixture
async def stack(db_url: str, processes: LiveProcesses, tmp_path: Path) -> AsyncIterator[Stack]:
    """A fresh server on `db_url` with one worker process (heartbeat 200 ms), and a client."""
    async with open_stack(db_url, processes, tmp_path, heartbeat_ms=200) as opened:
        yield opened


def run_moves(detail: RunDetail) -> list[str]:
    """The run's own statuses, oldest first."""
    return [step.to_status for step in detail.history if step.entity == "run"]


async def wait_status(handle: WorkflowRunHandle[object], status: RunStatus) -> None:
    """Wait until the run is in `status`."""
    assert await handle.wait_for_status([status], timeout=RESULT_TIMEOUT) is status


# -- sleeps ------------------------------------------------------------------------------


async def test_sleeps_in_a_loop_are_one_sleep_per_turn(stack: Stack) -> None:
    handle = await sleeper_v1.start(stack.client, Nap(key="loop", seconds=0.2, times=3))

    assert await handle.result(timeout=RESULT_TIMEOUT) == [False, False, False]

    detail = await handle.detail()
    assert [(s.name, s.occurrence, s.status) for s in detail.sleeps] == [
        ("nap", 0, "completed"),
        ("nap", 1, "completed"),
        ("nap", 2, "completed"),
    ]
    # the worker let the run go for each sleep; no task ran twice across the replays
    assert run_moves(detail).count("sleeping") == 3
    assert stack.counters.counts("note-loop") == {f"note-loop-{i}": 1 for i in range(3)}


async def test_wake_ends_a_day_long_sleep_early(stack: Stack) -> None:
    handle = await sleeper_v1.start(stack.client, Nap(key="day", seconds=86_400))
    await wait_status(handle, RunStatus.SLEEPING)

    await handle.wake()

    assert await handle.result(timeout=RESULT_TIMEOUT) == [True]
    (sleep,) = (await handle.detail()).sleeps
    assert sleep.status == "woken"
    assert stack.counters.count("note-day-0") == 1


# -- events ------------------------------------------------------------------------------


async def test_an_event_resumes_a_waiting_run(stack: Stack) -> None:
    handle = await approval_v1.start(stack.client, Wait(key="late"))
    await wait_status(handle, RunStatus.AWAITING_EVENT)

    sent = await handle.send_event(approved, Approval(by="ann"), reference_id="a-1")
    again = await handle.send_event(approved, Approval(by="bob"), reference_id="a-1")

    assert await handle.result(timeout=RESULT_TIMEOUT) == "approved by ann"
    assert (sent.duplicate, again.duplicate) == (False, True)
    assert again.event_id == sent.event_id
    assert stack.counters.counts("note-late") == {"note-late-before": 1, "note-late-after": 1}


async def test_an_event_sent_before_the_wait_is_kept_for_it(stack: Stack) -> None:
    handle = await approval_v1.start(stack.client, Wait(key="early"))
    # sent at once: most likely before the run even ran, at the latest before its wait
    await handle.send_event(approved, Approval(by="cy"))

    assert await handle.result(timeout=RESULT_TIMEOUT) == "approved by cy"
    detail = await handle.detail()
    assert [(e.name, e.consumed) for e in detail.events] == [("approved", True)]
    assert [(w.name, w.status) for w in detail.event_waits] == [("approved", "received")]


async def test_an_event_wait_times_out(stack: Stack) -> None:
    handle = await approval_v1.start(stack.client, Wait(key="slow", timeout_s=0.3))

    assert await handle.result(timeout=RESULT_TIMEOUT) == "timed out"
    (wait,) = (await handle.detail()).event_waits
    assert wait.status == "timed_out"


async def test_two_events_awaited_side_by_side(stack: Stack) -> None:
    handle = await both_events_v1.start(stack.client, "pair")
    await wait_status(handle, RunStatus.AWAITING_EVENT)
    detail = await handle.detail()
    # one suspension waits for both
    assert sorted(w.name for w in detail.event_waits) == ["approved", "shipped"]
    assert run_moves(detail).count("awaiting_event") == 1

    await handle.send_event(shipped, 7)
    await handle.send_event(approved, Approval(by="dee"))

    assert await handle.result(timeout=RESULT_TIMEOUT) == "dee shipped 7"


# -- children ----------------------------------------------------------------------------


async def test_a_child_result_reaches_its_parent(stack: Stack) -> None:
    handle = await family_v1.start(stack.client, Family(key="kid", depth=1))

    assert await handle.result(timeout=RESULT_TIMEOUT) == "child said done"

    (child,) = (await handle.detail()).children
    assert child.status is RunStatus.COMPLETED
    child_detail = await stack.client.run_handle(child.run_id).detail()
    assert child_detail.parent_run_id == handle.id
    assert stack.counters.counts("note-kid") == {"note-kid-1": 1, "note-kid-0": 1}


async def test_a_failing_child_wakes_its_parent_with_the_error(stack: Stack) -> None:
    handle = await family_v1.start(stack.client, Family(key="sad", depth=1, fail=True))

    assert await handle.result(timeout=RESULT_TIMEOUT) == "child failed: sad found nothing"
    (child,) = (await handle.detail()).children
    assert child.status is RunStatus.FAILED


async def test_cancel_cascades_to_a_grandchild(stack: Stack) -> None:
    handle = await family_v1.start(stack.client, Family(key="tree", depth=2, sleep_s=3600))
    # wait until the grandchild sleeps, the child and the parent wait for their children
    with anyio.fail_after(RESULT_TIMEOUT.total_seconds()):
        while stack.counters.count("note-tree-0") == 0:  # noqa: ASYNC110 - a file, no event
            await anyio.sleep(0.02)
    (child,) = (await handle.detail()).children
    child_handle = stack.client.run_handle(child.run_id)
    (grandchild,) = (await child_handle.detail()).children
    grandchild_handle = stack.client.run_handle(grandchild.run_id)
    await wait_status(grandchild_handle, RunStatus.SLEEPING)

    await handle.cancel("no longer needed")

    with pytest.raises(WorkflowCancelledError):
        await handle.result(timeout=RESULT_TIMEOUT)
    for descendant in (child_handle, grandchild_handle):
        assert await descendant.status() is RunStatus.CANCELLED


# -- pause and resume --------------------------------------------------------------------


async def test_pause_during_a_task_takes_effect_at_the_next_task_boundary(stack: Stack) -> None:
    handle = await pausable_v1.start(stack.client, Pausable(key="p", first_s=0, gate=True))
    with anyio.fail_after(RESULT_TIMEOUT.total_seconds()):
        while stack.counters.count("long-p") == 0:  # noqa: ASYNC110 - a file, no event
            await anyio.sleep(0.02)

    pausing = await handle.pause()
    # the task in flight goes on: the run stays running, its pause requested
    assert pausing.status is RunStatus.RUNNING
    assert pausing.pause_requested
    (stack.counters.directory / "gate-p").touch()  # the task finishes now

    await wait_status(handle, RunStatus.PAUSED)
    # a pause is no fault of the run: the worker says so, and warns of nothing
    assert "run paused at a task boundary" in stack.worker.log_text()
    assert "run abandoned" not in stack.worker.log_text()
    paused = await handle.detail()
    # the finished task is on record; the next one never started
    assert [t.status for t in paused.tasks if t.name == "long-step"] == [TaskStatus.COMPLETED]
    assert stack.counters.count("note-p-second") == 0

    await handle.resume()

    assert await handle.result(timeout=RESULT_TIMEOUT) == "long done, p-second"
    # nothing ran twice: the replay took the long step's recorded result
    assert stack.counters.count("long-p") == 1
    assert stack.counters.count("note-p-second") == 1
    assert run_moves(await handle.detail())[-5:] == [
        "running",
        "paused",
        "queued",
        "running",
        "completed",
    ]


async def test_cancel_during_a_task_stops_it_unrecorded(stack: Stack) -> None:
    handle = await pausable_v1.start(stack.client, Pausable(key="c", first_s=5.0))
    with anyio.fail_after(RESULT_TIMEOUT.total_seconds()):
        while stack.counters.count("long-c") == 0:  # noqa: ASYNC110 - a file, no event
            await anyio.sleep(0.02)

    await handle.cancel("changed my mind")

    with pytest.raises(WorkflowCancelledError) as cancelled:
        await handle.result(timeout=RESULT_TIMEOUT)
    assert cancelled.value.reason == "changed my mind"
    # the worker stops the task at its next heartbeat; nothing more is recorded
    await anyio.sleep(0.6)
    detail = await handle.detail()
    assert [t.status for t in detail.tasks if t.status is TaskStatus.COMPLETED] == []
    assert stack.counters.count("note-c-second") == 0


# -- webhooks ----------------------------------------------------------------------------


async def test_a_webhook_post_resumes_the_run_and_a_tampered_one_is_refused(
    stack: Stack,
) -> None:
    handle = await webhook_v1.start(stack.client, "w")
    await wait_status(handle, RunStatus.AWAITING_EVENT)
    url = (stack.counters.directory / "published.url").read_text()
    assert url.startswith(stack.server.base_url)

    async with httpx.AsyncClient() as outside:
        tampered = url[:-2] + ("AA" if not url.endswith("AA") else "BB")
        refused = await outside.post(tampered, json={"by": "mallory"})
        assert refused.status_code == 403, refused.text
        assert await handle.status() is RunStatus.AWAITING_EVENT
        wrong_body = await outside.post(url, json={"who": "nobody"})
        assert wrong_body.status_code == 422, wrong_body.text
        assert await handle.status() is RunStatus.AWAITING_EVENT

        accepted = await outside.post(url, json={"by": "erin"})
        assert accepted.status_code == 200, accepted.text

    assert await handle.result(timeout=RESULT_TIMEOUT) == "approved by erin through the webhook"
    # minted once, published once, though the run was replayed after the POST
    assert stack.counters.count("publish") == 1
    (event,) = (await handle.detail()).events
    assert (event.name, event.data) == ("approved", {"by": "erin"})
