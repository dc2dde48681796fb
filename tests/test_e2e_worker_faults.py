"""A worker process against bad answers, a dying server, and results over the body limit.

The worker talks to a real server, in most tests through `FaultProxy` (a real HTTP
proxy in this process that fails the requests a test picks). Task bodies count each
execution in a file (`e2e_app.count`), outside the engine: a finished task must never
run again while its worker lives, and after a worker's death only the tasks that were
still running may.
"""

from __future__ import annotations

import random
import signal
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from aiki_client import Client
from aiki_client._client import UNCHECKED_BODY_BYTES
from aiki_core import PayloadTooLargeError, RunStatus, TaskStatus
from aiki_server.testing import free_port
from e2e_app import Batch, Big, Greeting, Job, hello_v1, oversized_v1, side_by_side_v1, twenty_v1
from e2e_support import QUIET, Counters, start_worker
from fault_proxy import Fault, FaultProxy

if TYPE_CHECKING:
    from pathlib import Path

    from aiki_core.sdk import WorkflowRunHandle
    from live_processes import LiveProcesses

pytestmark = pytest.mark.slow

HEARTBEAT_MS = 300
RESULT_TIMEOUT = timedelta(seconds=60)
LIMIT = ("--max-body-bytes", "100000")
"""A server limit above the size the client sends unchecked (64 KiB)."""


def _is_write(path: str) -> bool:
    return path.endswith(("/tasks", "/transition", "/children", "/webhooks"))


async def _wait_for_task(handle: WorkflowRunHandle[Any], name: str, timeout: float) -> None:
    """Wait until the run has a completed task `name` on record."""
    with anyio.fail_after(timeout):
        while True:
            detail = await handle.detail()
            if any(t.name == name and t.status is TaskStatus.COMPLETED for t in detail.tasks):
                return
            await anyio.sleep(0.05)


def _steps_ran_once_each(counters: Counters, runs: int, steps: int) -> None:
    """Every step body of `runs` runs of `steps` steps ran exactly once per run."""
    counts = counters.counts("step-")
    assert counts == {f"step-{i:02d}": runs for i in range(1, steps + 1)}, counts


async def test_a_task_done_beside_a_running_one_is_on_record_before_the_worker_dies(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    counters = Counters(tmp_path / "counters")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = await start_worker(processes, url, counters, heartbeat_ms=HEARTBEAT_MS)
    server = await processes.start_server(db_url, "--claim-idle-timeout", "2", port=port)
    async with Client(server.base_url, logger=QUIET) as client:
        handle = await side_by_side_v1.start(client, Job(key="g"))
        # `quick` returned while `hold` still runs: its result goes on record at once
        await _wait_for_task(handle, "quick", timeout=20)
        assert counters.counts("hold-") == {"hold-g": 1}

        first.kill()
        assert await first.wait() == -signal.SIGKILL
        (counters.directory / "g.release").touch()
        second = await start_worker(processes, url, counters, heartbeat_ms=HEARTBEAT_MS)
        assert await handle.result(timeout=RESULT_TIMEOUT) == ["g held", "g quick"]
        assert second.returncode is None
    # only the task in flight at the kill ran again
    assert counters.counts("quick-") == {"quick-g": 1}
    assert counters.counts("hold-") == {"hold-g": 2}


async def test_task_records_that_meet_5xx_or_lost_connections_are_sent_again(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    counters = Counters(tmp_path / "counters")
    server = await processes.start_server(db_url)
    faults = iter(
        [
            Fault("status", 503, retry_after=0.2),
            Fault("drop_after"),  # recorded by the server, the answer lost: sent again
            Fault("status", 500),
            Fault("drop"),
            Fault("garbage"),
            Fault("status", 502),
            Fault("status", 429, retry_after=0.1),
        ]
    )

    def decide(method: str, path: str) -> Fault | None:
        return next(faults, None) if path.endswith("/tasks") else None

    async with (
        FaultProxy(server.base_url, decide) as proxy,
        Client(server.base_url, logger=QUIET) as client,
    ):
        worker = await start_worker(
            processes, proxy.base_url, counters, heartbeat_ms=HEARTBEAT_MS, task_delay_ms=30
        )
        handle = await twenty_v1.start(client, Batch(size=20))
        assert await handle.result(timeout=RESULT_TIMEOUT) == [i * i for i in range(1, 21)]
        assert next(faults, None) is None, "not every fault was met"
        detail = await handle.detail()
    assert worker.returncode is None
    _steps_ran_once_each(counters, runs=1, steps=20)
    # never given up: claimed once
    claims = [s for s in detail.history if s.entity == "run" and s.to_status == "running"]
    assert len(claims) == 1, claims


async def test_a_server_restart_while_results_are_held_runs_no_task_twice(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    counters = Counters(tmp_path / "counters")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    worker = await start_worker(processes, url, counters, heartbeat_ms=HEARTBEAT_MS)
    server = await processes.start_server(db_url, port=port)
    async with Client(server.base_url, logger=QUIET) as client:
        handle = await side_by_side_v1.start(client, Job(key="r"))
        await counters.wait_for_total("hold-r", 1, timeout=20)
        await counters.wait_for_total("quick-r", 1, timeout=20)

        server.kill()
        assert await server.wait() == -signal.SIGKILL
        # `hold` finishes while no server answers: its result is held and tried again
        (counters.directory / "r.release").touch()
        await anyio.sleep(1.0)
        await processes.start_server(db_url, port=port)
        assert await handle.result(timeout=RESULT_TIMEOUT) == ["r held", "r quick"]
    assert worker.returncode is None
    assert counters.counts("hold-") == {"hold-r": 1}
    assert counters.counts("quick-") == {"quick-r": 1}


@pytest.mark.parametrize(
    ("limit", "size"),
    [
        pytest.param(100_000, 150_000, id="refused-by-the-worker"),
        pytest.param(10_000, 20_000, id="refused-by-the-server"),
    ],
)
@pytest.mark.parametrize("from_task", [False, True], ids=["run-result", "task-result"])
async def test_a_result_over_the_limit_fails_its_run_and_the_worker_serves_on(
    db_url: str, processes: LiveProcesses, tmp_path: Path, limit: int, size: int, from_task: bool
) -> None:
    counters = Counters(tmp_path / "counters")
    server = await processes.start_server(db_url, "--max-body-bytes", str(limit))
    worker = await start_worker(processes, server.base_url, counters, heartbeat_ms=HEARTBEAT_MS)
    async with Client(server.base_url, logger=QUIET) as client:
        for attempt in range(2):  # the next claim of such a run must not hurt either
            handle = await oversized_v1.start(
                client, Big(key=f"b{attempt}", size=size, from_task=from_task)
            )
            status = await handle.wait_for_status([RunStatus.FAILED], timeout=RESULT_TIMEOUT)
            assert status is RunStatus.FAILED
            detail = await handle.detail()
            assert detail.error is not None
            assert detail.error.code == "payload_too_large", detail.error
            assert str(limit) in detail.error.message
            if size > UNCHECKED_BODY_BYTES:  # refused before sending: the part is named
                part = "tasks[0].result" if from_task else "action.result"
                assert detail.error.details["field"] == part, detail.error
        greeted = await hello_v1.start(client, Greeting(name="ada"))
        assert (await greeted.result(timeout=RESULT_TIMEOUT)).message
    assert worker.returncode is None


async def test_a_start_over_the_limit_is_refused_before_it_is_sent(
    db_url: str, processes: LiveProcesses
) -> None:
    server = await processes.start_server(db_url, *LIMIT)
    async with FaultProxy(server.base_url) as proxy, Client(proxy.base_url, logger=QUIET) as client:
        with pytest.raises(PayloadTooLargeError) as caught:
            await hello_v1.start(client, Greeting(name="a" * 150_000))
        error = caught.value
        assert (error.field, error.limit) == ("input", 100_000)
        assert "'input'" in error.message
        assert "100000" in error.message
        # the client's channel opening (which this proxy does not pass), then the limit
        assert [(s.method, s.path) for s in proxy.seen if s.path != "/api/v1/channel"] == [
            ("GET", "/api/v1/limits")
        ]
        # what fits goes; the limit was read once
        small = await hello_v1.start(client, Greeting(name="ada"))
        assert await small.status() is RunStatus.QUEUED
        assert [s.path for s in proxy.seen].count("/api/v1/limits") == 1


RUNS = 6
STEPS = 12
FAULT_RATE = 0.3
FAULT_WINDOW = 6.0
ANY_FAULT = [
    *(Fault("status", status) for status in (400, 403, 404, 409, 413, 422, 500, 502, 504)),
    Fault("status", 429, retry_after=0.1),
    Fault("status", 503, retry_after=0.1),
    Fault("drop"),
    Fault("drop_after"),
    Fault("garbage"),
    Fault("stall", seconds=0.5),
]
"""Every bad answer but the one deliberate stop (401, a refused API key)."""
WRITE_FAULTS = [f for f in ANY_FAULT if f.kind != "status" or f.status not in (404, 409, 413)]
"""On a run's writes: not the answers that mean "this run is gone" or "too large", which a
real server gives only when they are true (tests above cover the true ones)."""


async def test_the_worker_survives_every_bad_answer_and_runs_each_task_once(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    counters = Counters(tmp_path / "counters")
    server = await processes.start_server(db_url, "--claim-idle-timeout", "3")
    rng = random.Random(1212)
    faulting = True

    def decide(method: str, path: str) -> Fault | None:
        if not faulting or rng.random() >= FAULT_RATE:
            return None
        return rng.choice(WRITE_FAULTS if _is_write(path) else ANY_FAULT)

    async with (
        FaultProxy(server.base_url, decide) as proxy,
        Client(server.base_url, logger=QUIET) as client,
    ):
        worker = await start_worker(
            processes, proxy.base_url, counters, heartbeat_ms=HEARTBEAT_MS, task_delay_ms=100
        )
        handles = [await twenty_v1.start(client, Batch(size=STEPS)) for _ in range(RUNS)]
        await anyio.sleep(FAULT_WINDOW)
        faulting = False
        met = {s.fault for s in proxy.seen if s.fault is not None}
        assert len(met) >= 8, met
        for handle in handles:
            assert await handle.result(timeout=RESULT_TIMEOUT) == [i * i for i in range(1, 13)]
    assert worker.returncode is None, "the worker died of a bad answer"
    _steps_ran_once_each(counters, runs=RUNS, steps=STEPS)
