"""A worker at the edges: results no JSON can carry, branches a failed gather leaves
running, and heartbeats that meet a blip. An embedded server (SQLite and PostgreSQL),
a client over httpx's ASGI transport and a real `Worker`, in the test's process.
"""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from aiki_client import Client
from aiki_core import (
    CodecContext,
    CodecError,
    ConsoleLogger,
    LogLevel,
    RetryPolicy,
    RunStatus,
    WorkflowFailedError,
)
from aiki_core.wire import MAX_HELD_RUNS
from aiki_task import task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, workflow

if TYPE_CHECKING:
    from pydantic import JsonValue

    from aiki_core.wire import ClaimedRun
    from aiki_server.testing import EmbeddedServer

QUIET = ConsoleLogger(LogLevel.ERROR)
WAIT = timedelta(seconds=20)
RAN: dict[str, int] = {}
GATE = anyio.Event()
"""Holds the `gated` task until the test sets it."""
# what `os.listdir` gives for a file name that is not UTF-8: a lone surrogate
NOT_UTF8 = b"caf\xe9.txt".decode("utf-8", "surrogateescape")


@pytest.fixture(autouse=True)
def _reset() -> None:
    global GATE
    RAN.clear()
    GATE = anyio.Event()


def ran(name: str) -> None:
    RAN[name] = RAN.get(name, 0) + 1


@task("list-files")
async def list_files(folder: str) -> list[str]:
    ran("list-files")
    return ["report.pdf", NOT_UTF8]


@task("slow")
async def slow(n: int) -> int:
    ran("slow")
    await anyio.sleep(0.5)
    return n


@task("fails-once")
async def fails_once(n: int) -> int:
    ran("fails-once")
    if RAN["fails-once"] == 1:
        raise ConnectionError("the first attempt of the run fails at once")
    return n


@task("gated")
async def gated(n: int) -> int:
    ran("gated")
    await GATE.wait()
    return n


files = workflow("edge-files")


@files.v("1")
async def files_v1(run: WorkflowRun, folder: str) -> int:
    return len(await list_files.start(run, folder))


named = workflow("edge-named")


@named.v("1")
async def named_v1(run: WorkflowRun, folder: str) -> str:
    return NOT_UTF8


held = workflow("edge-held")


@held.v("1")
async def held_v1(run: WorkflowRun, n: int) -> int:
    return await gated.start(run, n)


plain = workflow("edge-plain")


@plain.v("1")
async def plain_v1(run: WorkflowRun, n: int) -> int:
    return n


both = workflow("edge-both")


@both.v("1", retry=RetryPolicy.fixed(max_attempts=2, delay=timedelta(milliseconds=10)))
async def both_v1(run: WorkflowRun, n: int) -> list[int]:
    pair = asyncio.gather(slow.start(run, n), fails_once.start(run, n))  # noqa: TID251 - users do
    return list(await pair)


async def test_a_task_result_no_json_can_carry_fails_the_run_and_runs_once(
    client: Client,
) -> None:
    async with Worker(client, [files_v1], logger=QUIET):
        handle = await files_v1.start(client, "/srv")
        with pytest.raises(WorkflowFailedError) as failed:
            await handle.result(timeout=WAIT)
    assert failed.value.error.code == "task_failed"
    assert "returned a result that is not JSON" in failed.value.error.message
    assert RAN == {"list-files": 1}


async def test_a_run_result_no_json_can_carry_fails_the_run(client: Client) -> None:
    async with Worker(client, [named_v1], logger=QUIET) as worker:
        handle = await named_v1.start(client, "/srv")
        with pytest.raises(WorkflowFailedError):
            await handle.result(timeout=WAIT)
        # the worker serves on
        other = await named_v1.start(client, "/home")
        with pytest.raises(WorkflowFailedError):
            await other.result(timeout=WAIT)
    assert worker.id


async def test_a_branch_a_failed_gather_left_running_is_on_record_before_the_retry(
    client: Client,
) -> None:
    async with Worker(client, [both_v1], logger=QUIET):
        handle = await both_v1.start(client, 7)
        assert await handle.result(timeout=WAIT) == [7, 7]
    # `slow` finished after its attempt failed: its result went with the failure
    assert RAN == {"slow": 1, "fails-once": 2}


async def test_a_failed_heartbeat_is_sent_again_within_the_interval(
    server: EmbeddedServer,
) -> None:
    beats: list[int] = []
    asgi = httpx.ASGITransport(app=server.app)

    async def blip(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/heartbeats"):
            beats.append(1)
            if len(beats) == 1:  # the first one meets a blip
                return httpx.Response(503, json={"error": {"code": "server_unavailable"}})
        return await asgi.handle_async_request(request)

    interval = timedelta(seconds=8)
    transport = httpx.MockTransport(blip)
    async with (
        Client("http://aiki.test", transport=transport, logger=QUIET) as client,
        Worker(client, [files_v1], logger=QUIET, heartbeat_interval=interval),
    ):
        with anyio.fail_after(interval.total_seconds() + 4):
            while not beats:  # noqa: ASYNC110 - the transport counts, no event to wait on
                await anyio.sleep(0.05)
        # the failed beat is sent again well before the next interval is over
        with anyio.fail_after(interval.total_seconds() / 2):
            while len(beats) < 2:  # noqa: ASYNC110
                await anyio.sleep(0.05)


async def test_a_worker_left_in_another_task_first_lets_its_run_finish(client: Client) -> None:
    # as pytest-asyncio does with a fixture: entered in one task, left in another
    worker = Worker(client, [held_v1], logger=QUIET)
    await asyncio.create_task(worker.__aenter__())  # noqa: TID251 - a task of its own
    handle = await held_v1.start(client, 7)
    with anyio.fail_after(WAIT.total_seconds()):
        while "gated" not in RAN:  # noqa: ASYNC110 - the task notes it, no event to wait on
            await anyio.sleep(0.01)

    leaving = asyncio.create_task(worker.__aexit__(None, None, None))  # noqa: TID251
    done, _ = await asyncio.wait([leaving], timeout=0.3)
    assert not done  # leaving waits for the run in flight
    GATE.set()
    await leaving
    # the run finished and was reported before the worker was gone
    assert await handle.status() is RunStatus.COMPLETED
    assert await handle.result(timeout=WAIT) == 7
    assert RAN == {"gated": 1}


async def test_a_timeout_around_the_block_gives_its_run_back_at_once(client: Client) -> None:
    handle = await held_v1.start(client, 7)
    worker = Worker(client, [held_v1], logger=QUIET)
    with anyio.move_on_after(WAIT.total_seconds()) as timeout:
        async with worker:
            with anyio.fail_after(WAIT.total_seconds()):
                while "gated" not in RAN:  # noqa: ASYNC110 - the task notes it
                    await anyio.sleep(0.01)
            timeout.cancel()  # as the deadline would: leaving the block is cancelled too
            await anyio.sleep_forever()

    # the run was given back as it was cancelled, not left claimed until the claim idles
    assert await handle.status() is RunStatus.QUEUED
    GATE.set()
    async with Worker(client, [held_v1], logger=QUIET):
        assert await handle.result(timeout=WAIT) == 7


async def test_a_cancelled_run_gives_its_run_back_at_once(client: Client) -> None:
    handle = await held_v1.start(client, 8)
    worker = Worker(client, [held_v1], logger=QUIET)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        with anyio.fail_after(WAIT.total_seconds()):
            while "gated" not in RAN:  # noqa: ASYNC110 - the task notes it
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()  # as a deadline around `run()` would

    # the run was given back as the worker was cancelled, not left claimed until it idles
    assert await handle.status() is RunStatus.QUEUED
    GATE.set()
    async with Worker(client, [held_v1], logger=QUIET):
        assert await handle.result(timeout=WAIT) == 8


async def test_a_run_still_running_after_the_grace_period_is_given_back(client: Client) -> None:
    handle = await held_v1.start(client, 9)
    grace = timedelta(milliseconds=200)
    async with Worker(client, [held_v1], logger=QUIET, graceful_shutdown_timeout=grace) as worker:
        with anyio.fail_after(WAIT.total_seconds()):
            while "gated" not in RAN:  # noqa: ASYNC110 - the task notes it
                await anyio.sleep(0.01)
        await worker.stop()

    # the grace period passed with the run still in its task: it went back to the queue
    assert await handle.status() is RunStatus.QUEUED
    GATE.set()
    async with Worker(client, [held_v1], logger=QUIET):
        assert await handle.result(timeout=WAIT) == 9
    assert RAN == {"gated": 2}


async def test_a_worker_runs_once(client: Client) -> None:
    worker = Worker(client, [held_v1], logger=QUIET)
    with pytest.raises(RuntimeError, match="never entered"):
        await worker.__aexit__(None, None, None)
    async with worker:
        with pytest.raises(RuntimeError, match="runs once"):
            await worker.__aenter__()
        with pytest.raises(RuntimeError, match="runs once"):
            await worker.run()
    with pytest.raises(RuntimeError, match="runs once"):
        async with worker:
            pass


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no words for it")


class CannotSealErrors:
    """Payloads as they are; a run's error is the one thing it cannot seal."""

    def address_key(self, run_input: JsonValue) -> bytes | None:
        return None

    def encode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        if context.field == "error":
            raise CodecError("the error key is gone")
        return value

    def decode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        return value


def broken_context(claim: ClaimedRun) -> object:
    raise Unprintable


async def test_an_engine_error_that_cannot_be_described_fails_the_run_not_the_worker(
    client: Client,
) -> None:
    async with Worker(client, [plain_v1], logger=QUIET, create_context=broken_context):
        for n in (1, 2):  # the worker serves on after the first
            handle = await plain_v1.start(client, n)
            with pytest.raises(WorkflowFailedError) as failed:
                await handle.result(timeout=WAIT)
            assert failed.value.error.type.endswith("Unprintable")
            assert failed.value.error.message == (
                "the worker's create_context failed: <Unprintable: str() failed>"
            )


async def test_an_engine_error_the_codec_cannot_seal_fails_the_run_not_the_worker(
    server: EmbeddedServer,
) -> None:
    transport = httpx.ASGITransport(app=server.app)
    async with (
        Client(
            "http://aiki.test", transport=transport, logger=QUIET, codec=CannotSealErrors()
        ) as client,
        Worker(client, [plain_v1], logger=QUIET, create_context=broken_context),
    ):
        for n in (1, 2):
            handle = await plain_v1.start(client, n)
            with pytest.raises(WorkflowFailedError) as failed:
                await handle.result(timeout=WAIT)
            # only the type travels in clear: the message the codec would hide does not
            # (the factory's error fails the version's attempt, whose sealing fails: the
            # engine reports that failure)
            assert failed.value.error.type == "aiki_core.CodecError"
            assert failed.value.error.message == (
                "the error could not be sealed by the worker's codec"
            )
            assert failed.value.error.sealed is None


async def test_a_crash_of_the_workers_loops_is_logged_and_ends_the_block(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = io.StringIO()
    worker = Worker(client, [plain_v1], logger=ConsoleLogger(LogLevel.ERROR, stream=lines))

    async def crash() -> None:
        raise RuntimeError("a bug in the heartbeat loop")

    monkeypatch.setattr(worker, "_heartbeats", crash)
    with pytest.raises(ExceptionGroup) as ended:  # the loops' task group's error, as it is
        async with worker:
            await anyio.sleep(WAIT.total_seconds())  # the crash ends the block long before
    assert ended.group_contains(RuntimeError, match="a bug in the heartbeat loop")
    assert "the worker's loops crashed; it stops" in lines.getvalue()
    assert "a bug in the heartbeat loop" in lines.getvalue()


async def test_a_worker_of_more_runs_than_one_claim_may_ask_for_claims_them(
    client: Client,
) -> None:
    """A claim asks for the most runs the server hands out at once, not for every free slot
    (a worker of 5,000 asked for 5,000, was refused each time, and never ran a run)."""
    handle = await plain_v1.start(client, 7)
    async with Worker(client, [plain_v1], logger=QUIET, max_concurrent_runs=5000):
        assert await handle.result(timeout=WAIT) == 7


async def test_a_worker_may_hold_no_more_runs_than_its_heartbeats_can_name(client: Client) -> None:
    # each heartbeat and directives poll names every run it holds, up to MAX_HELD_RUNS
    Worker(client, [plain_v1], max_concurrent_runs=MAX_HELD_RUNS)
    for bad in (0, MAX_HELD_RUNS + 1):
        with pytest.raises(ValueError, match="max_concurrent_runs"):
            Worker(client, [plain_v1], max_concurrent_runs=bad)
