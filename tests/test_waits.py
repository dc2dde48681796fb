"""Several waits at once, races between waits, and whose clock sets a due time.

An embedded server (`aiki_server.testing`, on SQLite and on PostgreSQL) whose clock the
test moves, a client over httpx's ASGI transport and a real `Worker`, all in the test's
process:

- whatever else a run waits for, the first wait that ends wakes it (an event beside a
  child, a sleep beside a child, an event beside a sleep);
- the branch that loses a race withdraws its wait, on the worker and on the server: a
  later event goes to the wait the run really has;
- a run with a pending sleep says `sleeping`, and `wake()` ends that sleep;
- due times are set by the server's clock, not by the worker's, however far off it is.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import pytest

from aiki_core import RetryPolicy, RunStatus
from aiki_task import task
from aiki_workflow import WorkflowRun, event, workflow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from aiki_client import Client
    from aiki_core.sdk import ExecutableVersion, WorkflowRunHandle
    from aiki_core.wire import RunDetail
    from aiki_server.testing import EmbeddedServer

WAIT = timedelta(seconds=15)
T = TypeVar("T")

go = event("go", str)
approved = event("approved", str)
rejected = event("rejected", str)
release = event("release", str)


async def first(*branches: Coroutine[Any, Any, T]) -> T:
    """The result of the branch that ends first; the others are cancelled.

    With `asyncio.wait`, as a user may write a race.
    """
    tasks = [asyncio.ensure_future(branch) for branch in branches]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for loser in pending:
        loser.cancel()
    await asyncio.gather(*pending, return_exceptions=True)  # noqa: TID251 - users do
    return next(iter(done)).result()


async def first_in_group(*branches: Callable[[], Awaitable[T]]) -> T:
    """The result of the branch that ends first, with an anyio task group."""
    won: list[T] = []
    async with anyio.create_task_group() as tg:

        async def branch(body: Callable[[], Awaitable[T]]) -> None:
            won.append(await body())
            tg.cancel_scope.cancel()

        for body in branches:
            tg.start_soon(branch, body)
    return won[0]


# -- workflows -----------------------------------------------------------------------------

kid = workflow("waits-kid")


@kid.v("1")
async def kid_v1(run: WorkflowRun, key: str) -> str:
    """Ends when released."""
    got = await release.wait(run)
    return f"released by {got.data}"


parent = workflow("waits-parent")


@parent.v("1")
async def child_or_event_v1(run: WorkflowRun, key: str) -> str:
    """The child's end or the event `go`, whichever comes first."""
    child = await kid_v1.start_child(run, key)

    async def by_event() -> str:
        got = await go.wait(run)
        return f"go by {got.data}"

    return await first(child.result(), by_event())


@parent.v("2")
async def child_or_sleep_v1(run: WorkflowRun, key: str) -> str:
    """The child's end, or give up after an hour."""
    child = await kid_v1.start_child(run, key)

    async def give_up() -> str:
        await run.sleep("give-up", timedelta(hours=1))
        return "gave up"

    return await first(child.result(), give_up())


napper = workflow("waits-napper")


@napper.v("1")
async def nap_or_event_v1(run: WorkflowRun, key: str) -> str:
    """A day's sleep or the event `go`, whichever ends first."""

    async def nap() -> str:
        slept = await run.sleep("nap", timedelta(days=1))
        return "woken" if slept.woken_early else "slept"

    async def by_event() -> str:
        got = await go.wait(run)
        return f"go by {got.data}"

    return await first_in_group(nap, by_event)


decision = workflow("waits-decision")


@decision.v("1")
async def decision_v1(run: WorkflowRun, key: str) -> str:
    """Race `approved` against `rejected`; once rejected, wait for an approval again."""

    async def on(verdict: Any) -> str:
        got = await verdict.wait(run)
        return f"{verdict.name} by {got.data}"

    winner = await first_in_group(lambda: on(approved), lambda: on(rejected))
    if winner.startswith("approved"):
        return winner
    again = await approved.wait(run)
    return f"{winner}, then approved by {again.data}"


@decision.v("2")
async def decision_v2(run: WorkflowRun, key: str) -> str:
    """As version 1, with `asyncio.wait` for the race."""

    async def on(verdict: Any) -> str:
        got = await verdict.wait(run)
        return f"{verdict.name} by {got.data}"

    winner = await first(on(approved), on(rejected))
    if winner.startswith("approved"):
        return winner
    again = await approved.wait(run)
    return f"{winner}, then approved by {again.data}"


clocked = workflow("waits-clocked")


@clocked.v("sleep")
async def sleeps_an_hour(run: WorkflowRun, key: str) -> str:
    """Sleep for an hour."""
    await run.sleep("hour", timedelta(hours=1))
    return "slept"


@clocked.v("timeout")
async def waits_an_hour(run: WorkflowRun, key: str) -> str:
    """Wait an hour at most for `go`."""
    got = await go.wait(run, timeout=timedelta(hours=1))
    return "timed out" if got.timed_out else f"go by {got.data}"


ATTEMPTS: list[str] = []


@task("down-for-an-hour", retry=RetryPolicy.fixed(max_attempts=2, delay=timedelta(hours=1)))
async def down_for_an_hour(key: str) -> str:
    """Fails its first attempt; the next is due an hour later."""
    ATTEMPTS.append(key)
    if len(ATTEMPTS) == 1:
        raise ConnectionError("down for an hour")
    return f"up after {len(ATTEMPTS)} attempts"


@clocked.v("retry")
async def retries_after_an_hour(run: WorkflowRun, key: str) -> str:
    """A task whose retry back-off is an hour long."""
    return await down_for_an_hour.start(run, key)


VERSIONS: list[ExecutableVersion] = [
    kid_v1,
    child_or_event_v1,
    child_or_sleep_v1,
    nap_or_event_v1,
    decision_v1,
    decision_v2,
    sleeps_an_hour,
    waits_an_hour,
    retries_after_an_hour,
]


@pytest.fixture
def workflows() -> list[ExecutableVersion]:
    """What the root conftest's `worker` fixture runs: every version here."""
    return VERSIONS


async def suspended(handle: WorkflowRunHandle[Any], status: RunStatus) -> RunDetail:
    """Wait until the run is suspended in `status`; its detail then."""
    assert await handle.wait_for_status([status], timeout=WAIT) is status
    return await handle.detail()


def waits_of(detail: RunDetail) -> list[tuple[str, str | None, int | None]]:
    return sorted((w.kind, w.name, w.occurrence) for w in detail.waits)


# -- any wait that ends wakes the run ------------------------------------------------------


@pytest.mark.usefixtures("worker")
async def test_an_event_wakes_a_run_that_also_awaits_a_child(client: Client) -> None:
    handle = await child_or_event_v1.start(client, "e")
    detail = await suspended(handle, RunStatus.AWAITING_CHILD)
    (child,) = detail.children
    assert waits_of(detail) == [("child", None, None), ("event", "go", 0)]
    assert [w.child_run_id for w in detail.waits if w.kind == "child"] == [child.run_id]
    kid_handle = client.run_handle(child.run_id, kid_v1.decode_result)
    await kid_handle.wait_for_status([RunStatus.AWAITING_EVENT], timeout=WAIT)

    await handle.send_event(go, "ann")

    # at once, without waiting for the child: which ends with its parent (terminate, the
    # default parent-close policy)
    assert await handle.result(timeout=WAIT) == "go by ann"
    assert await kid_handle.status() is RunStatus.CANCELLED


@pytest.mark.usefixtures("worker")
async def test_a_child_ending_wakes_a_run_that_also_awaits_an_event(client: Client) -> None:
    handle = await child_or_event_v1.start(client, "c")
    detail = await suspended(handle, RunStatus.AWAITING_CHILD)
    kid_handle = client.run_handle(detail.children[0].run_id, kid_v1.decode_result)
    await kid_handle.wait_for_status([RunStatus.AWAITING_EVENT], timeout=WAIT)

    await kid_handle.send_event(release, "bo")

    assert await handle.result(timeout=WAIT) == "released by bo"
    (wait,) = (await handle.detail()).event_waits
    assert (wait.name, wait.status) == ("go", "withdrawn")


@pytest.mark.usefixtures("worker")
async def test_a_sleep_falling_due_wakes_a_run_that_also_awaits_a_child(
    server: EmbeddedServer, client: Client
) -> None:
    handle = await child_or_sleep_v1.start(client, "s")
    detail = await suspended(handle, RunStatus.AWAITING_CHILD)
    assert waits_of(detail) == [("child", None, None), ("sleep", "give-up", 0)]

    server.advance(timedelta(hours=1))

    assert await handle.result(timeout=WAIT) == "gave up"


@pytest.mark.usefixtures("worker")
async def test_an_event_wakes_a_run_that_also_sleeps(client: Client) -> None:
    handle = await nap_or_event_v1.start(client, "e")
    # a run with a pending sleep says so, whatever else it waits for
    detail = await suspended(handle, RunStatus.SLEEPING)
    assert waits_of(detail) == [("event", "go", 0), ("sleep", "nap", 0)]

    await handle.send_event(go, "cy")

    assert await handle.result(timeout=WAIT) == "go by cy"
    (sleep,) = (await handle.detail()).sleeps
    assert sleep.status == "withdrawn"


@pytest.mark.usefixtures("worker")
async def test_wake_ends_the_sleep_of_a_run_racing_it_against_an_event(
    server: EmbeddedServer, client: Client
) -> None:
    handle = await nap_or_event_v1.start(client, "w")
    detail = await suspended(handle, RunStatus.SLEEPING)
    (nap,) = [w for w in detail.waits if w.kind == "sleep"]
    server_now = datetime.fromtimestamp(server.clock() / 1000, UTC)
    assert nap.due_at is not None
    assert server_now < nap.due_at <= server_now + timedelta(days=1)

    await handle.wake()

    assert await handle.result(timeout=WAIT) == "woken"
    detail = await handle.detail()
    assert [(s.name, s.status) for s in detail.sleeps] == [("nap", "woken")]
    assert [(w.name, w.status) for w in detail.event_waits] == [("go", "withdrawn")]
    assert detail.waits == []


# -- a lost race withdraws its wait ----------------------------------------------------------


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("version", [decision_v1, decision_v2], ids=["anyio", "asyncio"])
async def test_the_losing_wait_of_a_race_takes_no_later_event(client: Client, version: Any) -> None:
    handle = await version.start(client, "d")
    await suspended(handle, RunStatus.AWAITING_EVENT)

    await handle.send_event(rejected, "rex")
    # replayed: `rejected` won the race, and the run waits for a new approval
    detail = await suspended(handle, RunStatus.AWAITING_EVENT)
    assert waits_of(detail) == [("event", "approved", 1)]

    await handle.send_event(approved, "ann")

    assert await handle.result(timeout=WAIT) == "rejected by rex, then approved by ann"
    detail = await handle.detail()
    assert sorted((w.name, w.occurrence, w.status) for w in detail.event_waits) == [
        ("approved", 0, "withdrawn"),
        ("approved", 1, "received"),
        ("rejected", 0, "received"),
    ]


# -- due times are the server's ----------------------------------------------------------------


@pytest.fixture(params=[timedelta(hours=5), -timedelta(hours=5)], ids=["ahead", "behind"])
def skewed_worker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's clock is hours off the server's."""
    skew: timedelta = request.param
    monkeypatch.setattr("aiki_workflow._run._now", lambda: datetime.now(UTC) + skew)


async def still_after_a_timer_pass(
    server: EmbeddedServer, handle: WorkflowRunHandle[Any], status: RunStatus
) -> bool:
    """Whether the run is still in `status` once the timers have looked at the time."""
    await server.app.state.timers.run_once()
    return await handle.status() is status


@pytest.mark.usefixtures("skewed_worker")
@pytest.mark.parametrize(
    ("version", "status", "result"),
    [
        (sleeps_an_hour, RunStatus.SLEEPING, "slept"),
        (waits_an_hour, RunStatus.AWAITING_EVENT, "timed out"),
        (retries_after_an_hour, RunStatus.AWAITING_RETRY, "up after 2 attempts"),
    ],
    ids=["sleep", "event-timeout", "task-retry"],
)
@pytest.mark.usefixtures("worker")
async def test_an_hour_is_an_hour_of_the_servers_clock(
    server: EmbeddedServer, client: Client, version: Any, status: RunStatus, result: str
) -> None:
    ATTEMPTS.clear()
    handle = await version.start(client, "h")
    await suspended(handle, status)

    server.advance(timedelta(minutes=59))
    assert await still_after_a_timer_pass(server, handle, status)

    server.advance(timedelta(minutes=1))
    assert await handle.result(timeout=WAIT) == result
