"""Lifecycle hooks, sagas, workflow timeouts and side-by-side waits, through the harness.

An embedded server (`aiki_server.testing`) on SQLite and on PostgreSQL, a client over
httpx's ASGI transport and a worker, all in the test's process: each task body notes
its call in `CALLS`, so a test sees what ran, in which order, and how often.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from aiki_core import ErrorInfo, RetryPolicy, RunStatus, WorkflowFailedError
from aiki_task import task
from aiki_workflow import Saga, SleepInfo, WorkflowRun, event, workflow

if TYPE_CHECKING:
    from aiki_client import Client
    from aiki_core.sdk import ExecutableVersion
    from aiki_server.testing import EmbeddedServer

WAIT = timedelta(seconds=10)
CALLS: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


@task("log")
async def log(what: str) -> str:
    """Note a call."""
    CALLS.append(what)
    return what


@task("on-error")
async def on_error(error: ErrorInfo) -> None:
    """Note the error a run ended with."""
    CALLS.append(f"error: {error.message}")


@task("on-complete")
async def on_complete(result: str) -> None:
    """Note the result a run ended with."""
    CALLS.append(f"complete: {result}")


@task("on-sleep")
async def on_sleep(info: SleepInfo) -> None:
    """Note a sleep."""
    CALLS.append(f"sleep: {info.name} {info.occurrence}")


@task("before")
async def before(payload: str) -> None:
    """Note the start."""
    CALLS.append(f"before: {payload}")


@task("after")
async def after(payload: str) -> None:
    """Note the end."""
    CALLS.append(f"after: {payload}")


hooked = workflow("lifecycle-hooked")


@hooked.v(
    "1",
    before=[before],
    after=[after],
    on_complete=on_complete,
    on_error=on_error,
    on_sleep=on_sleep,
    retry=RetryPolicy.fixed(max_attempts=2, delay=timedelta(milliseconds=10)),
)
async def hooked_v1(run: WorkflowRun, payload: str) -> str:
    """Log, sleep twice (replaying each time), then end as the payload says."""
    await log.start(run, f"body {payload}")
    await run.sleep("pause", timedelta(milliseconds=1))
    await run.sleep("pause", timedelta(milliseconds=1))
    if payload == "fail":
        raise ValueError("told to fail")
    return f"ok {payload}"


@task("book")
async def book(item: str) -> str:
    """Book an item; a 'boat' cannot be booked."""
    if item == "boat":
        raise RuntimeError("no boats today")
    CALLS.append(f"book {item}")
    return item


@task("unbook")
async def unbook(item: str) -> None:
    """Undo a booking."""
    CALLS.append(f"unbook {item}")


trip = workflow("lifecycle-trip")


@trip.v("1")
async def trip_v1(run: WorkflowRun, items: list[str]) -> str:
    """Book each item; on failure, undo the bookings newest first."""
    async with Saga(run) as saga:
        for item in items:
            await book.start(run, item)
            saga.add(unbook, item)
            await run.sleep(f"between-{item}", timedelta(milliseconds=1))
    return "booked"


slow = workflow("lifecycle-slow")


@slow.v("1", timeout=timedelta(hours=1))
async def slow_v1(run: WorkflowRun, hours: int) -> str:
    """Sleep longer than the version's timeout allows."""
    await run.sleep("too-long", timedelta(hours=hours))
    return "woke"


ping = event("ping", int)
pong = event("pong", int)
pair = workflow("lifecycle-pair")


@pair.v("1")
async def pair_v1(run: WorkflowRun, key: str) -> int:
    """Wait for two events at once, with asyncio.gather as a user may write it."""
    first, second = await asyncio.gather(ping.wait(run), pong.wait(run))  # noqa: TID251 - users do
    assert first.data is not None
    assert second.data is not None
    return first.data + second.data


VERSIONS: list[ExecutableVersion] = [hooked_v1, trip_v1, slow_v1, pair_v1]


@pytest.fixture
def workflows() -> list[ExecutableVersion]:
    """What the root conftest's `worker` fixture runs: every version here."""
    return VERSIONS


@pytest.mark.usefixtures("worker")
async def test_hooks_run_once_around_a_completed_run(client: Client) -> None:
    handle = await hooked_v1.start(client, "a")

    assert await handle.result(timeout=WAIT) == "ok a"
    # three executions (two sleeps), yet every hook and task ran once, in order
    assert CALLS == [
        "before: a",
        "body a",
        "sleep: pause 0",
        "sleep: pause 1",
        "complete: ok a",
        "after: a",
    ]


@pytest.mark.usefixtures("worker")
async def test_error_hooks_wait_for_the_last_attempt(client: Client) -> None:
    handle = await hooked_v1.start(client, "fail")

    with pytest.raises(WorkflowFailedError) as failed:
        await handle.result(timeout=WAIT)
    assert failed.value.error.message == "told to fail"
    # a retried attempt replays its tasks; on_error and after wait for the last one
    assert CALLS == [
        "before: fail",
        "body fail",
        "sleep: pause 0",
        "sleep: pause 1",
        "error: told to fail",
        "after: fail",
    ]
    assert (await handle.detail()).attempt == 2


@pytest.mark.usefixtures("worker")
async def test_a_saga_undoes_its_steps_newest_first(client: Client) -> None:
    handle = await trip_v1.start(client, ["car", "hotel", "boat"])

    with pytest.raises(WorkflowFailedError) as failed:
        await handle.result(timeout=WAIT)
    assert "no boats today" in str(failed.value.error.message) + str(
        [cause.message for cause in failed.value.error.causes()]
    )
    assert CALLS == ["book car", "book hotel", "unbook hotel", "unbook car"]


@pytest.mark.usefixtures("worker")
async def test_a_workflow_timeout_fails_a_run_that_sleeps_past_it(
    server: EmbeddedServer, client: Client
) -> None:
    handle = await slow_v1.start(client, 2)
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)

    server.advance(timedelta(hours=1))

    with pytest.raises(WorkflowFailedError) as failed:
        await handle.result(timeout=WAIT)
    assert failed.value.error.type.endswith("WorkflowTimeoutError")


@pytest.mark.usefixtures("worker")
async def test_asyncio_gather_over_two_events_suspends_once(client: Client) -> None:
    handle = await pair_v1.start(client, "p")
    await handle.wait_for_status([RunStatus.AWAITING_EVENT], timeout=WAIT)
    waiting = await handle.detail()
    assert sorted(w.name for w in waiting.event_waits) == ["ping", "pong"]

    await handle.send_event(pong, 2)
    await handle.send_event(ping, 40)

    assert await handle.result(timeout=WAIT) == 42
