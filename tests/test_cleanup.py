"""The cleanup phase: cancelled or timed-out runs run their hooks and compensations.

Through the harness (an embedded server on SQLite and on PostgreSQL, a client and a
worker in the test's process): each task body notes its call in `CALLS`, so a test
sees what ran, in which order, and how often.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import pytest

from aiki_core import (
    Concurrency,
    ConcurrencyStrategy,
    ErrorInfo,
    RunId,
    RunStatus,
    WorkflowCancelledError,
    WorkflowFailedError,
)
from aiki_task import task
from aiki_workflow import Saga, WorkflowRun, event, workflow

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aiki_client import Client
    from aiki_core.sdk import ExecutableVersion, WorkflowRunHandle
    from aiki_core.wire import RunDetail
    from aiki_server.testing import EmbeddedServer
    from aiki_worker import Worker

WAIT = timedelta(seconds=10)
CALLS: list[str] = []
GATE: list[anyio.Event] = []
"""The gate a stuck compensation waits on (one per test)."""


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


@pytest.fixture
def gate(worker: Worker) -> Iterator[None]:
    """A closed gate for stuck compensations, opened before `worker` stops."""
    GATE[:] = [anyio.Event()]
    yield
    GATE[0].set()


@task("cleanup-book")
async def book(item: str) -> str:
    """Book an item."""
    CALLS.append(f"book {item}")
    return item


@task("cleanup-unbook")
async def unbook(item: str) -> None:
    """Undo a booking."""
    CALLS.append(f"unbook {item}")


@task("cleanup-gated")
async def gated(what: str) -> None:
    """Note the call, then wait until the test opens the gate."""
    CALLS.append(f"gated {what}")
    await GATE[0].wait()


@task("cleanup-on-cancel")
async def on_cancel(error: ErrorInfo) -> None:
    """Note the cancellation."""
    CALLS.append(f"cancel: {error.details.get('reason')}")


@task("cleanup-on-error")
async def on_error(error: ErrorInfo) -> None:
    """Note the error a run ended with."""
    CALLS.append(f"error: {error.code}")


@task("cleanup-after")
async def after(items: list[str]) -> None:
    """Note the end."""
    CALLS.append(f"after: {','.join(items)}")


trip = workflow("cleanup-trip")


@trip.v(
    "1",
    timeout=timedelta(hours=1),
    on_cancel=on_cancel,
    on_error=on_error,
    after=[after],
)
async def trip_v1(run: WorkflowRun, items: list[str]) -> str:
    """Book each item, then hold the bookings for two hours; undo them if it ends early."""
    async with Saga(run) as saga:
        for item in items:
            await book.start(run, item)
            saga.add(unbook, item)
        try:
            await run.sleep("hold", timedelta(hours=2))
        finally:
            await book.start(run, "finally")
    return "held"


stuck = workflow("cleanup-stuck")


@stuck.v("1")
async def stuck_v1(run: WorkflowRun, item: str) -> str:
    """Book, then sleep; a cancel's compensation waits for the test's gate."""
    async with Saga(run) as saga:
        await book.start(run, item)
        saga.add(gated, f"unbook {item}")
        await run.sleep("hold", timedelta(hours=2))
    return "held"


busy = workflow("cleanup-busy")


@busy.v("1", on_cancel=on_cancel)
async def busy_v1(run: WorkflowRun, item: str) -> str:
    """Book, then run a task that waits for the test's gate."""
    async with Saga(run) as saga:
        await book.start(run, item)
        saga.add(unbook, item)
        await gated.start(run, "in flight")
    return "done"


unserved = workflow("cleanup-unserved")


@unserved.v("1")
async def unserved_v1(run: WorkflowRun, item: str) -> str:
    """No worker serves this version: its runs stay queued."""
    return item


go = event("cleanup-go", str)


@task("cleanup-done")
async def done(item: str) -> None:
    """Note the end of a run that was let go."""
    CALLS.append(f"done {item}")


async def book_then_wait(run: WorkflowRun, item: str) -> str:
    """Book, then wait for `go`; a cancel's compensation waits for the test's gate."""
    async with Saga(run) as saga:
        await book.start(run, item)
        saga.add(gated, f"unbook {item}")
        got = await go.wait(run)
        await done.start(run, f"{item} {got.data}")
    return "done"


ticker = workflow("cleanup-ticker")


@ticker.v("1", on_cancel=on_cancel)
async def ticker_v1(run: WorkflowRun, item: str) -> str:
    """`book_then_wait`, started by a schedule."""
    return await book_then_wait(run, item)


single = workflow("cleanup-single")


@single.v(
    "1",
    on_cancel=on_cancel,
    concurrency=Concurrency(limit=1, strategy=ConcurrencyStrategy.CANCEL_IN_PROGRESS),
)
async def single_v1(run: WorkflowRun, item: str) -> str:
    """One at a time (a new run cancels the one in progress): book, then a gated task."""
    async with Saga(run) as saga:
        await book.start(run, item)
        saga.add(gated, f"unbook {item}")
        await gated.start(run, f"in flight {item}")
        await done.start(run, item)
    return "done"


VERSIONS: list[ExecutableVersion] = [trip_v1, stuck_v1, busy_v1, ticker_v1, single_v1]


@pytest.fixture
def workflows() -> list[ExecutableVersion]:
    """What the root conftest's `worker` fixture runs."""
    return VERSIONS


def moves(detail: RunDetail) -> list[str]:
    """The run's statuses, in order, without repeats (a cleanup's claim keeps its status)."""
    statuses: list[str] = []
    for row in detail.history:
        if row.entity == "run" and (not statuses or statuses[-1] != row.to_status):
            statuses.append(row.to_status)
    return statuses


async def until_called(what: str) -> None:
    """Wait until a task body has noted `what`."""
    with anyio.fail_after(WAIT.total_seconds()):
        while what not in CALLS:  # noqa: ASYNC110 - a list, no event
            await anyio.sleep(0.01)


async def cleaning_up(handle: WorkflowRunHandle[str], first: str) -> None:
    """Start the cleanup of the sleeping `handle` and wait until `first` has run."""
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    await handle.cancel("plans changed")
    await until_called(first)


@pytest.mark.usefixtures("worker")
async def test_a_cancelled_sleeping_run_compensates_and_runs_its_hooks(client: Client) -> None:
    handle = await trip_v1.start(client, ["car", "hotel"])
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)

    await handle.cancel("plans changed")

    with pytest.raises(WorkflowCancelledError) as cancelled:
        await handle.result(timeout=WAIT)
    assert cancelled.value.reason == "plans changed"
    # the sleep raised the cancellation: `finally`, the saga, on_cancel and after ran
    assert CALLS == [
        "book car",
        "book hotel",
        "book finally",
        "unbook hotel",
        "unbook car",
        "cancel: plans changed",
        "after: car,hotel",
    ]
    detail = await handle.detail()
    assert detail.status is RunStatus.CANCELLED
    assert moves(detail)[-3:] == ["sleeping", "cleaning_up", "cancelled"]
    # the cleanup's tasks are on record like any other
    assert sorted(t.name for t in detail.tasks).count("cleanup-unbook") == 2


@pytest.mark.usefixtures("worker")
async def test_a_timed_out_run_compensates_runs_on_error_and_fails(
    server: EmbeddedServer, client: Client
) -> None:
    handle = await trip_v1.start(client, ["boat"])
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)

    server.advance(timedelta(hours=1))

    with pytest.raises(WorkflowFailedError) as failed:
        await handle.result(timeout=WAIT)
    assert failed.value.error.type.endswith("WorkflowTimeoutError")
    assert CALLS == [
        "book boat",
        "book finally",
        "unbook boat",
        "error: workflow_timeout",
        "after: boat",
    ]
    detail = await handle.detail()
    assert detail.status is RunStatus.FAILED
    assert moves(detail)[-3:] == ["sleeping", "cleaning_up", "failed"]


@pytest.mark.usefixtures("gate")
async def test_a_cancel_during_the_cleanup_ends_the_run_at_once(client: Client) -> None:
    handle = await stuck_v1.start(client, "van")
    await cleaning_up(handle, "gated unbook van")
    assert await handle.status() is RunStatus.CLEANING_UP

    await handle.cancel("really")

    detail = await handle.detail()
    assert detail.status is RunStatus.CANCELLED
    assert moves(detail)[-3:] == ["sleeping", "cleaning_up", "cancelled"]
    assert detail.history[-1].reason == "really"
    assert detail.error is not None
    assert detail.error.details["reason"] == "really"


@pytest.mark.usefixtures("gate")
async def test_a_cleanup_past_its_deadline_ends_the_run_anyway(
    server: EmbeddedServer, client: Client
) -> None:
    handle = await stuck_v1.start(client, "van")
    await cleaning_up(handle, "gated unbook van")

    server.advance(timedelta(seconds=61))  # the default cleanup timeout is 60 s

    with pytest.raises(WorkflowCancelledError) as cancelled:
        await handle.result(timeout=WAIT)
    assert cancelled.value.reason == "plans changed"
    detail = await handle.detail()
    assert moves(detail)[-3:] == ["sleeping", "cleaning_up", "cancelled"]
    assert detail.history[-1].reason == (
        "cleanup deadline passed: ended without its cleanup finished"
    )


@pytest.mark.usefixtures("worker")
async def test_a_run_never_started_is_cancelled_at_once(client: Client) -> None:
    queued = await unserved_v1.start(client, "x")
    scheduled = await trip_v1.start(client, ["x"], delay=timedelta(hours=1))

    for handle, status in ((queued, RunStatus.QUEUED), (scheduled, RunStatus.SCHEDULED)):
        await handle.cancel("not needed")
        assert await handle.status() is RunStatus.CANCELLED
        assert moves(await handle.detail()) == [status.value, "cancelled"]
    assert CALLS == []


@pytest.mark.usefixtures("worker")
async def test_a_paused_run_that_ran_cleans_up_when_cancelled(client: Client) -> None:
    handle = await trip_v1.start(client, ["car"])
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    await handle.pause()

    await handle.cancel("plans changed")

    with pytest.raises(WorkflowCancelledError):
        await handle.result(timeout=WAIT)
    assert CALLS == [
        "book car",
        "book finally",
        "unbook car",
        "cancel: plans changed",
        "after: car",
    ]
    assert moves(await handle.detail())[-3:] == ["paused", "cleaning_up", "cancelled"]


@pytest.mark.usefixtures("gate")
async def test_a_run_cancelled_during_a_task_cleans_up_where_it_was(client: Client) -> None:
    handle = await busy_v1.start(client, "car")
    await until_called("gated in flight")

    await handle.cancel("plans changed")

    # the worker running it is fenced; the cleanup's replay raises the cancellation at
    # the task that was in flight, which does not run again
    with pytest.raises(WorkflowCancelledError):
        await handle.result(timeout=WAIT)
    assert CALLS == ["book car", "gated in flight", "unbook car", "cancel: plans changed"]
    detail = await handle.detail()
    assert moves(detail)[-3:] == ["running", "cleaning_up", "cancelled"]
    assert "cleanup-gated" not in [t.name for t in detail.tasks]


async def until_status(client: Client, run_id: RunId, status: RunStatus) -> None:
    """Wait until the run `run_id` is in `status`."""
    await client.run_handle(run_id).wait_for_status([status], timeout=WAIT)


async def let_go_and_finish(client: Client, run_id: RunId, item: str) -> None:
    """Send `go` to the run waiting for it, and wait for its end."""
    handle = client.run_handle(run_id)
    await handle.wait_for_status([RunStatus.AWAITING_EVENT], timeout=WAIT)
    await handle.send_event(go, "now")
    await until_called(f"done {item} now")
    await handle.wait_for_status([RunStatus.COMPLETED], timeout=WAIT)


@pytest.mark.usefixtures("gate")
async def test_a_run_cancelled_by_its_schedules_overlap_cleans_up_before_the_next_runs(
    server: EmbeddedServer, client: Client
) -> None:
    hour = timedelta(hours=1)
    await client.schedules.create("tick", ticker_v1, "tick", every=hour, overlap="cancel_previous")
    server.advance(hour)
    first = await wait_for_runs(client, "cleanup-ticker", 1)
    await until_status(client, first[0], RunStatus.AWAITING_EVENT)

    server.advance(hour)  # the next occurrence cancels the first run, which cleans up
    first_id, second_id = await wait_for_runs(client, "cleanup-ticker", 2)
    await until_called("gated unbook tick")
    assert await client.run_handle(first_id).status() is RunStatus.CLEANING_UP
    # held until the first run has ended: it does not run beside the cleanup
    assert await client.run_handle(second_id).status() is RunStatus.SCHEDULED

    GATE[0].set()

    await until_status(client, first_id, RunStatus.CANCELLED)
    assert "cancel: schedule 'tick' started its next occurrence" in CALLS
    await let_go_and_finish(client, second_id, "tick")
    detail = await client.run_handle(second_id).detail()
    assert moves(detail)[:3] == ["scheduled", "queued", "running"]
    assert detail.history[1].reason == f"previous run {first_id} of its schedule ended"


@pytest.mark.usefixtures("gate")
async def test_a_run_cancelled_by_a_concurrency_strategy_cleans_up_in_its_slot(
    client: Client,
) -> None:
    first = await single_v1.start(client, "one")
    await until_called("gated in flight one")

    second = await single_v1.start(client, "two")  # cancels the first, which cleans up
    await until_called("gated unbook one")
    assert await first.status() is RunStatus.CLEANING_UP
    # the cleanup holds the slot: the new run waits for it
    assert await second.status() is RunStatus.QUEUED

    GATE[0].set()

    with pytest.raises(WorkflowCancelledError):
        await first.result(timeout=WAIT)
    assert await second.result(timeout=WAIT) == "done"
    # the new run started only once the cleanup had ended
    (cancel,) = [i for i, call in enumerate(CALLS) if call.startswith("cancel: ")]
    assert CALLS[cancel].startswith(f"cancel: cancelled to make room for run {second.id}")
    assert cancel < CALLS.index("book two") < CALLS.index("done two")


async def wait_for_runs(client: Client, workflow: str, count: int) -> list[RunId]:
    """The ids of the workflow's first `count` runs, oldest first, once there are as many."""
    with anyio.fail_after(WAIT.total_seconds()):
        while True:
            page = await client.list_runs(workflow=workflow)
            if len(page.runs) >= count:
                return [run.id for run in sorted(page.runs, key=lambda r: r.created_at)][:count]
            await anyio.sleep(0.01)
