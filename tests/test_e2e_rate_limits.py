"""Rate limits end to end: tasks that declare a `RateLimit`, real workers, a server.

- 10 units per second, 40 task attempts from 8 runs on 2 workers and a real server
  process: the grant times the tasks were told (the server's clock, through
  `TaskContext.rate_limit_granted_at`) never put more than 10 units in any window
  of 1 s, and every run completes.
- On an embedded server whose clock the test moves: each key has its own budget; a
  wait longer than the in-process threshold suspends the run (`awaiting_retry`, its
  detail saying which limit and key it waits for) and frees the worker's slot; a
  replayed (memoized) task takes no units; an undefined limit, too many units, or a
  key function that raises fail the task at once, with a typed error in the run's
  detail, and the worker goes on; bad definitions are refused by the client.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from aiki_client import Client
from aiki_core import (
    ConflictError,
    PayloadValidationError,
    RateLimit,
    RateLimitKeyError,
    RateLimitNotFoundError,
    RetryPolicy,
    RunStatus,
    WorkflowFailedError,
)
from aiki_server.testing import server_process
from aiki_task import TaskContext, task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, workflow
from e2e_support import QUIET
from fault_proxy import Fault, FaultProxy

if TYPE_CHECKING:
    from datetime import datetime

    from aiki_core.sdk import WorkflowRunHandle
    from aiki_core.wire import RunDetail
    from aiki_server.testing import EmbeddedServer
    from aiki_workflow import WorkflowVersion

WAIT = timedelta(seconds=30)


class Job(BaseModel):
    """Whose budget a call takes from, and which call it is."""

    user: str
    n: int = 0


LEDGER: list[tuple[datetime, str]] = []
"""Each attempt that ran: when its units were granted (the server's clock), and its task."""


def note(ctx: TaskContext) -> None:
    assert ctx.rate_limit_granted_at is not None
    LEDGER.append((ctx.rate_limit_granted_at, ctx.task_name))


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    LEDGER.clear()


# -- 10 units per second, two workers --------------------------------------------------------


@task("rl-call-api", rate_limit=RateLimit("ten-per-second"))
async def call_api(n: int, ctx: TaskContext) -> int:
    """One unit of the shared budget."""
    note(ctx)
    return n


burst = workflow("rl-burst")


@burst.v("1")
async def burst_v1(run: WorkflowRun, first: int) -> int:
    """Five calls side by side."""
    calls = (call_api.start(run, first + i) for i in range(5))
    results = await asyncio.gather(*calls)  # noqa: TID251 - users do
    return sum(results)


def busiest_window(times: list[int], per_ms: int) -> int:
    """The most grants in any window [t, t + per_ms), each window starting at a grant."""
    return max(sum(1 for t in times if start <= t < start + per_ms) for start in times)


async def test_ten_units_per_second_never_crowd_a_window(db_url: str) -> None:
    async with server_process(db_url) as server, Client(server.base_url, logger=QUIET) as client:
        await client.rate_limits.set("ten-per-second", limit=10, per=timedelta(seconds=1))
        handles = [await burst_v1.start(client, 10 * i) for i in range(8)]
        async with (
            Client(server.base_url, logger=QUIET) as second,
            Worker(client, [burst_v1], logger=QUIET),
            Worker(second, [burst_v1], logger=QUIET),
        ):
            results = [await h.result(timeout=WAIT) for h in handles]
    assert results == [sum(10 * i + k for k in range(5)) for i in range(8)]
    times = sorted(int(at.timestamp() * 1000) for at, _ in LEDGER)
    assert len(times) == 40  # each attempt ran once
    assert busiest_window(times, 1_000) <= 10
    # one unit at a time: granted 100 ms apart at least, so 40 of them span 3.9 s
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 100
    assert times[-1] - times[0] >= 3_900


# -- keys, long waits, replays -----------------------------------------------------------------


@task("rl-per-user", rate_limit=RateLimit("per-user-hourly", key=lambda job: job.user))
async def per_user(job: Job, ctx: TaskContext) -> str:
    """One unit of the user's hourly budget."""
    note(ctx)
    return f"{job.user}#{job.n}"


keyed = workflow("rl-keyed")


@keyed.v("1")
async def keyed_v1(run: WorkflowRun, job: Job) -> str:
    """One call on the user's budget."""
    return await per_user.start(run, job)


@keyed.v("nap")
async def keyed_then_nap(run: WorkflowRun, job: Job) -> str:
    """One call on the user's budget, then a durable nap: the call is replayed after it."""
    done = await per_user.start(run, job)
    await run.sleep("nap", timedelta(minutes=1))
    return done


@task("rl-free")
async def free(n: int) -> int:
    """No rate limit."""
    return n


plain = workflow("rl-plain")


@plain.v("1")
async def plain_v1(run: WorkflowRun, n: int) -> int:
    """A run that takes no units."""
    return await free.start(run, n)


async def test_each_key_has_its_own_budget_and_a_long_wait_suspends(
    server: EmbeddedServer, client: Client
) -> None:
    await client.rate_limits.set("per-user-hourly", limit=1, per=timedelta(hours=1))
    async with Worker(client, [keyed_v1, plain_v1], max_concurrent_runs=1, logger=QUIET):
        first = await keyed_v1.start(client, Job(user="u1", n=1))
        other = await keyed_v1.start(client, Job(user="u2", n=1))
        assert await first.result(timeout=WAIT) == "u1#1"
        assert await other.result(timeout=WAIT) == "u2#1"  # u1's use left u2's budget whole

        again = await keyed_v1.start(client, Job(user="u1", n=2))
        assert await again.wait_for_status([RunStatus.AWAITING_RETRY], timeout=WAIT)
        detail = await again.detail()
        (wait,) = detail.waits
        assert wait.kind == "retry"
        assert wait.reason is not None
        assert wait.reason.startswith("waiting for rate limit per-user-hourly (key u1) until ")
        assert wait.due_at is not None and wait.due_at > LEDGER[0][0] + timedelta(minutes=59)
        assert any(
            h.to_status == RunStatus.AWAITING_RETRY
            and "rate limit per-user-hourly" in (h.reason or "")
            for h in detail.history
        )
        assert detail.tasks == []  # waiting is no attempt: nothing recorded
        # the worker's only slot is free: another run goes through meanwhile
        assert await (await plain_v1.start(client, 7)).result(timeout=WAIT) == 7

        server.advance(timedelta(hours=1))
        assert await again.result(timeout=WAIT) == "u1#2"
    assert len(LEDGER) == 3  # u1, u2, then u1 again an hour after its first unit
    assert LEDGER[2][0] - LEDGER[0][0] >= timedelta(hours=1)
    (record,) = (await again.detail()).tasks
    assert [a.attempt for a in record.attempts] == [1]


async def test_a_replayed_task_takes_no_units(server: EmbeddedServer, client: Client) -> None:
    await client.rate_limits.set("per-user-hourly", limit=1, per=timedelta(hours=1))
    async with Worker(client, [keyed_then_nap], logger=QUIET):
        handle = await keyed_then_nap.start(client, Job(user="u1"))
        await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
        server.advance(timedelta(minutes=1))
        # the replay after the nap takes its result from the record: had it asked for a
        # unit, u1's budget (spent an hour long) would have suspended the run again
        assert await handle.result(timeout=WAIT) == "u1#0"
    assert len(LEDGER) == 1
    answer = await client.rate_limits.acquire("per-user-hourly", key="u1")
    assert not answer.granted
    assert answer.retry_at == LEDGER[0][0] + timedelta(hours=1)  # nothing taken since


# -- bad input -----------------------------------------------------------------------------------

RETRY_THRICE = RetryPolicy.fixed(max_attempts=3, delay=timedelta(milliseconds=10))


@task("rl-undefined", rate_limit=RateLimit("nobody-defined-this"), retry=RETRY_THRICE)
async def undefined(n: int) -> int:
    """Its limit is not defined."""
    return n


@task("rl-greedy", rate_limit=RateLimit("per-user-hourly", units=2), retry=RETRY_THRICE)
async def greedy(n: int) -> int:
    """Asks for more units at once than the limit has."""
    return n


def _no_user(job: Job) -> str:
    raise KeyError("no user")


@task("rl-bad-key", rate_limit=RateLimit("per-user-hourly", key=_no_user), retry=RETRY_THRICE)
async def bad_key(job: Job) -> str:
    """Its key function raises."""
    return job.user


@task("rl-long-key", rate_limit=RateLimit("per-user-hourly", key=lambda job: job.user * 300))
async def long_key(job: Job) -> str:
    """Its key function returns a key over the length limit."""
    return job.user


@task("rl-odd-key", rate_limit=RateLimit("per-user-hourly", key=lambda job: "\ud800" + job.user))
async def odd_key(job: Job) -> str:
    """Its key function returns a string no JSON can carry (a lone surrogate)."""
    return job.user


broken = workflow("rl-broken")


@broken.v("undefined")
async def broken_undefined(run: WorkflowRun, job: Job) -> int:
    return await undefined.start(run, job.n)


@broken.v("greedy")
async def broken_greedy(run: WorkflowRun, job: Job) -> int:
    return await greedy.start(run, job.n)


@broken.v("bad-key")
async def broken_bad_key(run: WorkflowRun, job: Job) -> str:
    return await bad_key.start(run, job)


@broken.v("odd-key")
async def broken_odd_key(run: WorkflowRun, job: Job) -> str:
    return await odd_key.start(run, job)


@broken.v("long-key")
async def broken_long_key(run: WorkflowRun, job: Job) -> str:
    return await long_key.start(run, job)


async def failure_of(handle: WorkflowRunHandle[Any]) -> RunDetail:
    with pytest.raises(WorkflowFailedError):
        await handle.result(timeout=WAIT)
    return await handle.detail()


@pytest.mark.parametrize(
    ("version", "code", "says"),
    [
        (broken_undefined, "rate_limit_not_found", "rate limit 'nobody-defined-this' is not"),
        (broken_greedy, "conflict", "2 units of rate limit 'per-user-hourly'"),
        (broken_bad_key, "rate_limit_key", "KeyError: 'no user'"),
        (broken_long_key, "rate_limit_key", "a string of 600 characters"),
        (broken_odd_key, "rate_limit_key", "'\\ud800u1'"),
    ],
)
async def test_a_bad_rate_limit_fails_the_task_at_once_and_the_worker_goes_on(
    server: EmbeddedServer, client: Client, version: WorkflowVersion[Job, Any], code: str, says: str
) -> None:
    await client.rate_limits.set("per-user-hourly", limit=1, per=timedelta(hours=1))
    async with Worker(client, [version, plain_v1], logger=QUIET):
        handle = await version.start(client, Job(user="u1", n=3))
        detail = await failure_of(handle)
        (record,) = detail.tasks
        assert record.status == "failed"
        assert [a.attempt for a in record.attempts] == [1]  # not retried
        assert record.error is not None and record.error.code == code
        assert says in record.error.message
        assert detail.error is not None and says in detail.error.message
        assert await (await plain_v1.start(client, 1)).result(timeout=WAIT) == 1
    assert LEDGER == []
    # nothing was taken from the budget
    assert (await client.rate_limits.acquire("per-user-hourly", key="u1")).granted


async def test_bad_definitions_are_refused(client: Client) -> None:
    for limit, per in ((0, timedelta(seconds=1)), (-1, timedelta(seconds=1)), (1, timedelta(0))):
        with pytest.raises(PayloadValidationError):
            await client.rate_limits.set("x", limit=limit, per=per)
    with pytest.raises(RateLimitNotFoundError):
        await client.rate_limits.get("x")
    with pytest.raises(RateLimitNotFoundError):
        await client.rate_limits.acquire("x")
    with pytest.raises(PayloadValidationError):
        RateLimit("x", units=0)
    with pytest.raises(PayloadValidationError):
        RateLimit("not a name!")
    # a `/` splits the routes' path: refused where it is given, not a 404 "no route"
    with pytest.raises(PayloadValidationError):
        RateLimit("team/openai")
    with pytest.raises(PayloadValidationError):
        await client.rate_limits.set("team/openai", limit=1, per=timedelta(seconds=1))
    await client.rate_limits.set("x", limit=3, per=timedelta(seconds=1))
    with pytest.raises(ConflictError):
        await client.rate_limits.acquire("x", units=4)
    assert [r.name for r in await client.rate_limits.list()] == ["x"]
    assert (await client.rate_limits.delete("x")).limit == 3
    assert await client.rate_limits.list() == []


# -- runs whose start takes units ---------------------------------------------------------------

paced = workflow("rl-paced")


@paced.v("1", rate_limit=RateLimit("starts-hourly", key=lambda job: job.user))
async def paced_v1(run: WorkflowRun, job: Job) -> int:
    """A run whose start takes a unit of its user's hourly budget."""
    return await free.start(run, job.n)


@paced.v("bad-key", rate_limit=RateLimit("starts-hourly", key=_no_user))
async def paced_bad_key(run: WorkflowRun, job: Job) -> int:
    """A version whose key function raises."""
    return job.n


async def test_a_start_that_takes_units_waits_for_them(
    server: EmbeddedServer, client: Client
) -> None:
    await client.rate_limits.set("starts-hourly", limit=1, per=timedelta(hours=1))
    async with Worker(client, [paced_v1], logger=QUIET):
        now = await paced_v1.start(client, Job(user="u1", n=1))
        later = await paced_v1.start(client, Job(user="u1", n=2))
        assert await now.result(timeout=WAIT) == 1
        detail = await later.detail()
        assert detail.status is RunStatus.SCHEDULED
        assert detail.start_at is not None
        assert detail.history[0].reason == (
            f"started; waiting for rate limit starts-hourly (key u1) until"
            f" {detail.start_at.isoformat()}"
        )
        server.advance(timedelta(hours=1))
        assert await later.result(timeout=WAIT) == 2

    with pytest.raises(RateLimitKeyError, match="KeyError: 'no user'"):
        await paced_bad_key.start(client, Job(user="u1"))
    with pytest.raises(PayloadValidationError, match="no start_at or delay"):
        await paced_v1.start(client, Job(user="u1"), delay=timedelta(seconds=1))
    page = await client.list_runs(workflow="rl-paced")
    assert {r.id for r in page.runs} == {now.id, later.id}  # the refused starts left nothing


# -- faults -------------------------------------------------------------------------------------


async def test_a_grant_whose_answer_is_lost_is_not_taken_twice(db_url: str) -> None:
    lost: list[str] = []

    def decide(method: str, path: str) -> Fault | None:
        if path.endswith("/acquire") and not lost:
            lost.append(path)
            return Fault("drop_after")  # granted by the server, the answer lost
        return None

    async with (
        server_process(db_url) as server,
        FaultProxy(server.base_url, decide) as proxy,
        Client(proxy.base_url, logger=QUIET) as client,
    ):
        await client.rate_limits.set("per-user-hourly", limit=1, per=timedelta(hours=1))
        async with Worker(client, [keyed_v1], logger=QUIET):
            handle = await keyed_v1.start(client, Job(user="u1"))
            status = await handle.wait_for_status(
                [RunStatus.COMPLETED, RunStatus.AWAITING_RETRY], timeout=WAIT
            )
        answer = await client.rate_limits.acquire("per-user-hourly", key="u1")
    assert lost
    assert status is RunStatus.COMPLETED  # not suspended for the hour its own lost grant took
    assert len(LEDGER) == 1
    assert answer.retry_at == LEDGER[0][0] + timedelta(hours=1)  # one unit taken, not two
