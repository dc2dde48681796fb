"""Context factories: the worker's and each version's, sync or async, and ones that raise.

An embedded server (SQLite and PostgreSQL), a client over httpx's ASGI transport and
a real `Worker`, in the test's process.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

from aiki_core import ConsoleLogger, LogLevel, RetryPolicy, RunStatus, WorkflowFailedError
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, workflow

if TYPE_CHECKING:
    from aiki_client import Client
    from aiki_core.wire import ClaimedRun

QUIET = ConsoleLogger(LogLevel.ERROR)
WAIT = timedelta(seconds=20)
MADE: list[str] = []
"""Which factory made each context, in order."""


@pytest.fixture(autouse=True)
def _reset() -> None:
    MADE.clear()


@dataclass
class Db:
    """What a factory makes: who made it, for which run."""

    made_by: str
    run_id: str


def worker_db(claim: ClaimedRun) -> Db:
    MADE.append("worker")
    return Db("worker", claim.run.id)


async def worker_db_async(claim: ClaimedRun) -> Db:
    await anyio.lowlevel.checkpoint()
    MADE.append("worker-async")
    return Db("worker-async", claim.run.id)


async def version_db(claim: ClaimedRun) -> Db:
    await anyio.lowlevel.checkpoint()
    MADE.append("version")
    return Db("version", claim.run.id)


def unreachable_db(claim: ClaimedRun) -> Db:
    MADE.append("unreachable")
    raise ConnectionError("the database is down")


ctx = workflow("ctx")


@ctx.v("plain")
async def plain(run: WorkflowRun[Db], n: int) -> str:
    assert run.ctx.run_id == run.id
    return run.ctx.made_by


@ctx.v("own", create_context=version_db)
async def own(run: WorkflowRun[Db], n: int) -> str:
    assert run.ctx.run_id == run.id
    return run.ctx.made_by


@ctx.v("down", create_context=unreachable_db)
async def down(run: WorkflowRun[Db], n: int) -> str:
    raise AssertionError("never runs without its context")


ONCE_MORE = RetryPolicy.fixed(max_attempts=2, delay=timedelta(0))


@ctx.v("down-retried", create_context=unreachable_db, retry=ONCE_MORE)
async def down_retried(run: WorkflowRun[Db], n: int) -> str:
    raise AssertionError("never runs without its context")


async def test_the_worker_factory_sync_or_async_makes_run_ctx(client: Client) -> None:
    for factory, name in ((worker_db, "worker"), (worker_db_async, "worker-async")):
        async with Worker(client, [plain], logger=QUIET, create_context=factory):
            handle = await plain.start(client, 1)
            assert await handle.result(timeout=WAIT) == name


async def test_the_version_factory_wins_over_the_workers(client: Client) -> None:
    async with Worker(client, [plain, own], logger=QUIET, create_context=worker_db):
        assert await (await own.start(client, 1)).result(timeout=WAIT) == "version"
        assert await (await plain.start(client, 1)).result(timeout=WAIT) == "worker"
    assert MADE == ["version", "worker"]


async def test_the_version_factory_without_a_worker_factory(client: Client) -> None:
    async with Worker(client, [own], logger=QUIET):
        assert await (await own.start(client, 1)).result(timeout=WAIT) == "version"


async def test_a_raising_factory_fails_the_attempt_not_the_worker(client: Client) -> None:
    async with Worker(client, [down, down_retried, own], logger=QUIET):
        handle = await down.start(client, 1)
        with pytest.raises(WorkflowFailedError) as failed:
            await handle.result(timeout=WAIT)
        error = failed.value.error
        assert error.type == "ConnectionError"
        assert error.message == "the version's create_context failed: the database is down"
        detail = await handle.detail()
        assert detail.status is RunStatus.FAILED
        assert detail.error is not None
        assert detail.error.message == error.message
        # the version's retry applies to the attempt the factory failed
        retried = await down_retried.start(client, 1)
        with pytest.raises(WorkflowFailedError):
            await retried.result(timeout=WAIT)
        assert (await retried.detail()).attempt == 2
        # and the worker serves on
        assert await (await own.start(client, 1)).result(timeout=WAIT) == "version"
