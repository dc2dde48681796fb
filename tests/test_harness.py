"""The public test harness (`aiki_server.testing`), used as a user's test would use it.

An embedded server (on SQLite and on PostgreSQL), a client over httpx's ASGI
transport and a worker, all in the test's process; the harness's clock skips a
day-long sleep. And a real server process, for a test that needs one.
"""

from __future__ import annotations

import signal
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import pytest

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel, RunStatus
from aiki_server.testing import ServerStartError, TestClock, embedded_server, server_process
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, workflow

if TYPE_CHECKING:
    from pathlib import Path

    from aiki_core.sdk import ExecutableVersion
    from aiki_server.testing import EmbeddedServer

QUIET = ConsoleLogger(LogLevel.ERROR)

napper = workflow("harness-napper")


@napper.v("1")
async def napper_v1(run: WorkflowRun, hours: int) -> str:
    """Sleep for `hours`, durably."""
    await run.sleep("nap", timedelta(hours=hours))
    return f"slept {hours} h"


@pytest.fixture
def workflows() -> list[ExecutableVersion]:
    """What the root conftest's `worker` fixture runs.

    That fixture is a plain `async with Worker(...): yield`, as a user's would be:
    pytest-asyncio enters it in the fixture's setup task and leaves it in its teardown
    task, and the worker runs in a task of its own.
    """
    return [napper_v1]


@pytest.mark.usefixtures("worker")
async def test_a_day_long_sleep_is_over_as_soon_as_the_clock_skips_the_day(
    server: EmbeddedServer, client: Client
) -> None:
    handle = await napper_v1.start(client, 24)
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=timedelta(seconds=5))

    server.advance(timedelta(days=1))
    # the day is skipped: the run ends within the second the test gives it
    assert await handle.result(timeout=timedelta(seconds=1)) == "slept 24 h"
    (sleep,) = (await handle.detail()).sleeps
    assert sleep.status == "completed"


@pytest.mark.usefixtures("worker")
async def test_a_sleep_is_not_over_before_its_time(server: EmbeddedServer, client: Client) -> None:
    handle = await napper_v1.start(client, 24)
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=timedelta(seconds=5))
    server.advance(timedelta(hours=23))
    with anyio.move_on_after(0.3):
        await handle.wait_for_status([RunStatus.COMPLETED])
    assert await handle.status() is RunStatus.SLEEPING
    server.advance(timedelta(hours=1))
    assert await handle.result(timeout=timedelta(seconds=5)) == "slept 24 h"


def test_the_clock_only_moves_forward() -> None:
    clock = TestClock()
    before = clock()
    clock.advance(timedelta(minutes=1))
    assert clock() - before >= 60_000
    with pytest.raises(ValueError, match="forward"):
        clock.advance(timedelta(seconds=-1))


async def test_a_thousand_sleeping_runs_hold_no_worker_slot(
    server: EmbeddedServer, client: Client
) -> None:
    async with Worker(client, [napper_v1], max_concurrent_runs=10, logger=QUIET):
        handles = [await napper_v1.start(client, 1) for _ in range(1000)]
        # all sleep at once: with 10 slots, that means none of them holds one
        for handle in handles:
            await handle.wait_for_status([RunStatus.SLEEPING], timeout=timedelta(seconds=60))
        server.advance(timedelta(hours=1))
        for handle in handles:
            assert await handle.result(timeout=timedelta(seconds=60)) == "slept 1 h"


@pytest.mark.usefixtures("worker")
async def test_a_delayed_start_waits_for_its_time(server: EmbeddedServer, client: Client) -> None:
    handle = await napper_v1.start(client, 0, delay=timedelta(hours=2))
    assert await handle.status() is RunStatus.SCHEDULED
    server.advance(timedelta(hours=2))
    assert await handle.result(timeout=timedelta(seconds=5)) == "slept 0 h"


async def test_the_default_is_a_temporary_sqlite_file() -> None:
    async with embedded_server() as server:
        assert server.app.state.db.dialect == "sqlite"
        path = server.app.state.db.path
        assert path.exists()
    assert not path.exists()


async def test_a_server_process_serves_until_its_block_ends(db_url: str) -> None:
    async with server_process(db_url) as server:
        async with (
            Client(server.base_url, logger=QUIET) as client,
            Worker(client, [napper_v1], logger=QUIET),
        ):
            handle = await napper_v1.start(client, 0)
            assert await handle.result(timeout=timedelta(seconds=10)) == "slept 0 h"
        assert f"serving on {server.base_url}" in server.log_text()
        assert server.returncode is None
    assert server.returncode == -signal.SIGTERM  # stopped, not killed


async def test_a_server_process_that_cannot_start_says_why() -> None:
    with pytest.raises(ServerStartError, match="unrecognized arguments: --no-such-option"):
        async with server_process("sqlite:///:memory:", "--no-such-option"):
            pytest.fail("the server started")


async def test_a_server_process_on_a_taken_port_does_not_start(tmp_path: Path) -> None:
    async with server_process(f"sqlite:///{tmp_path / 'first.db'}") as first:
        # the second would exit at once, unable to bind, while the first answers /health
        with pytest.raises(ServerStartError, match=f"port {first.port} is taken"):
            async with server_process(f"sqlite:///{tmp_path / 'second.db'}", port=first.port):
                pytest.fail("a server started on a taken port")
    # once the first has stopped, its port is free again at once
    async with server_process(f"sqlite:///{tmp_path / 'second.db'}", port=first.port) as again:
        assert again.port == first.port
