"""Crash safety end to end: SIGKILL the worker, or the server, in the middle of a run.

A run of twenty steps (each a distinct task call of ~100 ms, counted in a file per
step by the worker process) is interrupted once eight step bodies have started:

- the worker process is SIGKILLed, and a second worker finishes the run once the
  first one's claim went idle (`--claim-idle-timeout 2`);
- the server process is SIGKILLed and restarted on the same database and port; the
  worker keeps running and must find its way back on its own.

Either way the run completes with the right result, every step recorded as completed
at the crash ran exactly once, at most the one in flight ran twice, none more.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import pytest

from aiki_client import Client
from aiki_core import RunStatus, TaskStatus
from aiki_server.testing import free_port
from e2e_app import Batch, step_counter, twenty_v1
from e2e_support import (
    QUIET,
    Counters,
    check_exactly_once,
    completed_steps,
    completed_steps_in_database,
    start_worker,
)

if TYPE_CHECKING:
    from pathlib import Path

    from aiki_core.wire import RunDetail
    from live_processes import LiveProcesses

pytestmark = pytest.mark.slow

STEPS = 20
KILL_AFTER = 8  # step bodies started
TASK_DELAY_MS = 100
HEARTBEAT_MS = 300
CLAIM_IDLE = ("--claim-idle-timeout", "2")
EXPECTED = [i * i for i in range(1, STEPS + 1)]
RESULT_TIMEOUT = timedelta(seconds=60)


def _claims(detail: RunDetail) -> list[str]:
    """The reasons of the run's moves to running: `claimed by <worker id>`, in order."""
    return [
        step.reason or ""
        for step in detail.history
        if step.entity == "run" and step.to_status == RunStatus.RUNNING.value
    ]


def _check_all_steps_recorded(detail: RunDetail) -> None:
    steps = [task for task in detail.tasks if task.name == "step"]
    assert len(steps) == STEPS
    assert all(task.status is TaskStatus.COMPLETED for task in steps)


async def test_worker_sigkilled_mid_run_another_worker_finishes_it(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    counters = Counters(tmp_path / "counters")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = await start_worker(
        processes, url, counters, heartbeat_ms=HEARTBEAT_MS, task_delay_ms=TASK_DELAY_MS
    )
    server = await processes.start_server(db_url, *CLAIM_IDLE, port=port)
    async with Client(server.base_url, logger=QUIET) as client:
        handle = await twenty_v1.start(client, Batch(size=STEPS))
        await counters.wait_for_total("step-", KILL_AFTER, timeout=30)

        first.kill()
        assert await first.wait() == -signal.SIGKILL
        at_kill = await handle.detail()
        started = set(counters.counts("step-"))
        completed = completed_steps(at_kill)
        assert at_kill.status is RunStatus.RUNNING, "the kill did not land mid-run"
        assert KILL_AFTER - 1 <= len(completed) < STEPS, completed

        second = await start_worker(
            processes, url, counters, heartbeat_ms=HEARTBEAT_MS, task_delay_ms=TASK_DELAY_MS
        )
        assert await handle.result(timeout=RESULT_TIMEOUT) == EXPECTED
        assert second.returncode is None

        final = counters.counts("step-")
        check_exactly_once(final, STEPS, completed, started)
        # the first worker ran what was recorded; the second ran everything not yet started
        for index in range(1, STEPS + 1):
            name = step_counter(index)
            pids = [execution.pid for execution in counters.executions(name)]
            if name in completed:
                assert pids == [first.pid], (name, pids)
            elif name not in started:
                assert pids == [second.pid], (name, pids)
            else:  # in flight at the kill: started by the first, run again by the second
                assert pids == [first.pid, second.pid], (name, pids)

        detail = await handle.detail()
        assert detail.status is RunStatus.COMPLETED
        _check_all_steps_recorded(detail)
        # claimed twice: by the first worker, then the second; the long-poll claim the
        # first had in flight when it died must not take the run once the claim went idle
        claims = _claims(detail)
        assert len(claims) == 2, claims
        assert claims[0] != claims[1], "the second claim should be another worker's"
        reasons = [step.reason or "" for step in detail.history if step.entity == "run"]
        assert any("idle" in reason for reason in reasons), reasons


async def test_server_sigkilled_mid_run_and_restarted_the_worker_recovers(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    counters = Counters(tmp_path / "counters")
    port = free_port()
    worker = await start_worker(
        processes,
        f"http://127.0.0.1:{port}",
        counters,
        heartbeat_ms=HEARTBEAT_MS,
        task_delay_ms=TASK_DELAY_MS,
    )
    server = await processes.start_server(db_url, *CLAIM_IDLE, port=port)
    async with Client(server.base_url, logger=QUIET) as client:
        handle = await twenty_v1.start(client, Batch(size=STEPS))
        await counters.wait_for_total("step-", KILL_AFTER, timeout=30)

        server.kill()
        assert await server.wait() == -signal.SIGKILL
        # nothing can write now: what the database holds is what was recorded
        completed = await completed_steps_in_database(db_url, handle.id)
        assert KILL_AFTER - 1 <= len(completed) < STEPS, completed
        # the worker runs into the outage (its write of the step in flight fails)
        await anyio.sleep(1.0)
        started = set(counters.counts("step-"))

        restarted = await processes.start_server(db_url, *CLAIM_IDLE, port=port)
        assert restarted.base_url == server.base_url
        assert await handle.result(timeout=RESULT_TIMEOUT) == EXPECTED
        assert worker.returncode is None, "the worker died with the server"

        final = counters.counts("step-")
        check_exactly_once(final, STEPS, completed, started)
        assert {e.pid for name in final for e in counters.executions(name)} == {worker.pid}
        detail = await handle.detail()
        assert detail.status is RunStatus.COMPLETED
        _check_all_steps_recorded(detail)


async def test_sigterm_lets_the_running_run_finish_then_the_worker_exits(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    counters = Counters(tmp_path / "counters")
    server = await processes.start_server(db_url)
    worker = await start_worker(
        processes, server.base_url, counters, heartbeat_ms=HEARTBEAT_MS, task_delay_ms=TASK_DELAY_MS
    )
    async with Client(server.base_url, logger=QUIET) as client:
        handle = await twenty_v1.start(client, Batch(size=STEPS))
        await counters.wait_for_total("step-", 3, timeout=30)

        os.kill(worker.pid, signal.SIGTERM)
        # the worker stops claiming but finishes the run it holds, then exits cleanly
        assert await worker.wait(timeout=30) == 0
        detail = await handle.detail()
        assert detail.status is RunStatus.COMPLETED
        assert await handle.result(timeout=RESULT_TIMEOUT) == EXPECTED
        assert set(counters.counts("step-").values()) == {1}
        assert len(_claims(detail)) == 1

        # a run started after the stop waits, queued, for another worker
        later = await twenty_v1.start(client, Batch(size=1))
        assert await later.status() is RunStatus.QUEUED
