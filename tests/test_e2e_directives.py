"""Cancel and pause reach a worker's running code promptly, not at its next heartbeat.

The worker (`directives_app.py`) heartbeats every 30 s, the default: each test
waits a few seconds at most for what it checks, so what the worker learned it
learned from its directives poll.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from aiki_client import Client
from aiki_core import RunStatus, WorkflowCancelledError
from directives_app import Job, cancellable_v1
from e2e_support import QUIET, Counters
from fault_proxy import Fault, FaultProxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiki_server.testing import LoggedProcess, ServerProcess
    from live_processes import LiveProcesses

APP = Path(__file__).with_name("directives_app.py")
SOON = 10.0
"""Seconds each test waits at most: a third of the heartbeat interval."""


class Stack:
    """A server, the directives worker on it, and a client."""

    def __init__(
        self, server: ServerProcess, worker: LoggedProcess, client: Client, counters: Counters
    ) -> None:
        self.server = server
        self.worker = worker
        self.client = client
        self.counters = counters

    async def started(self, key: str) -> None:
        """Wait until the run's long step started."""
        await self.counters.wait_for_total(f"started-{key}", 1, timeout=30)

    async def logged(self, text: str) -> None:
        """Wait (`SOON` at most) until the worker logged `text`."""
        with anyio.fail_after(SOON):
            while text not in self.worker.log_text():  # noqa: ASYNC110 - a log file
                await anyio.sleep(0.05)

    async def soon(self, counter: str) -> None:
        """Wait (`SOON` at most) until the counter has a line."""
        await self.counters.wait_for_total(counter, 1, timeout=SOON)


@pytest.fixture
async def stack(db_url: str, processes: LiveProcesses, tmp_path: Path) -> AsyncIterator[Stack]:
    server = await processes.start_server(db_url)
    counters = Counters(tmp_path / "counters")
    counters.directory.mkdir()
    argv = [sys.executable, str(APP), "--url", server.base_url, "--counters"]
    worker = await processes.spawn("worker", [*argv, str(counters.directory)])
    async with Client(server.base_url, logger=QUIET) as client:
        yield Stack(server, worker, client, counters)


async def test_cancel_reaches_a_running_async_task_at_once(stack: Stack) -> None:
    handle = await cancellable_v1.start(stack.client, Job(key="async-1"))
    await stack.started("async-1")

    await handle.cancel("not needed")

    await stack.soon("cancelled-async-1")  # the task's own code saw the cancellation
    with pytest.raises(WorkflowCancelledError):
        await handle.result()
    assert stack.counters.count("after-async-1") == 0
    await stack.logged("run stopped")
    stopped = next(ln for ln in stack.worker.log_text().splitlines() if "run stopped" in ln)
    assert 'directive="cancel"' in stopped


async def test_pause_reaches_the_run_at_its_next_task_boundary(stack: Stack) -> None:
    handle = await cancellable_v1.start(stack.client, Job(key="pause-1"))
    await stack.started("pause-1")

    pausing = await handle.pause()
    assert pausing.status is RunStatus.RUNNING
    (stack.counters.directory / "gate-pause-1").touch()

    with anyio.fail_after(SOON):
        assert await handle.wait_for_status([RunStatus.PAUSED]) is RunStatus.PAUSED
    assert stack.counters.count("after-pause-1") == 0  # the next step never started
    await handle.resume()
    assert await handle.result() == "through, after"


async def test_a_plain_task_polling_cancelled_stops(stack: Stack) -> None:
    handle = await cancellable_v1.start(stack.client, Job(key="polls-1"))
    await stack.started("polls-1")

    await handle.cancel()

    await stack.soon("stopped-polls-1")
    with pytest.raises(WorkflowCancelledError):
        await handle.result()
    await anyio.sleep(1.5)  # past the grace: a thread that stopped is not abandoned
    assert "abandoned" not in stack.worker.log_text()


async def test_a_plain_task_ignoring_cancellation_is_reported_abandoned(stack: Stack) -> None:
    handle = await cancellable_v1.start(stack.client, Job(key="ignores-1"))
    await stack.started("ignores-1")

    await handle.cancel()

    await stack.logged("abandoned")
    line = next(ln for ln in stack.worker.log_text().splitlines() if "abandoned" in ln)
    assert handle.id in line
    assert "ignores-cancelled" in line
    with anyio.fail_after(SOON):
        while True:
            notes = [
                step.reason or ""
                for step in (await handle.detail()).history
                if "abandoned" in (step.reason or "")
            ]
            if notes:
                break
            await anyio.sleep(0.05)
    assert "'ignores-cancelled' attempt 1 abandoned" in notes[0]
    assert (await handle.detail()).status is RunStatus.CANCELLED
    assert stack.counters.count("finished-ignores-1") == 0  # it does run on, unseen


async def test_a_poll_answered_404_is_asked_again_later(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    """A 404 from a replica not yet upgraded, or a proxy, does not end the poll for good."""
    server = await processes.start_server(db_url)
    refused = iter([Fault("status", 404)])

    def decide(method: str, path: str) -> Fault | None:
        return next(refused, None) if path.endswith("/directives") else None

    counters = Counters(tmp_path / "counters")
    counters.directory.mkdir()
    async with (
        FaultProxy(server.base_url, decide) as proxy,
        Client(server.base_url, logger=QUIET) as client,
    ):
        argv = [sys.executable, str(APP), "--url", proxy.base_url, "--counters"]
        worker = await processes.spawn("worker", [*argv, str(counters.directory)])
        stack = Stack(server, worker, client, counters)
        handle = await cancellable_v1.start(client, Job(key="async-404"))
        await stack.started("async-404")
        with anyio.fail_after(SOON):  # asked again after the worker's back-off (5 s)
            polled = ("/directives", None)
            while polled not in {(s.path[-11:], s.fault) for s in proxy.seen}:  # noqa: ASYNC110
                await anyio.sleep(0.05)

        await handle.cancel("not needed")

        await stack.soon("cancelled-async-404")  # from the poll: the heartbeat is 30 s away
    polls = [s.fault for s in proxy.seen if s.path.endswith("/directives")]
    assert polls[0] == Fault("status", 404)
