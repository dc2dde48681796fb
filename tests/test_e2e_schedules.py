"""Schedules end to end: `client.schedules` against a real server process and worker.

A schedule fires every second while the server is SIGKILLed and restarted on the same
database: every occurrence starts at most one run (distinct reference ids, distinct
occurrences on the schedule's grid), the downtime costs one catch-up run, not a
backlog, and every run the schedule started completes, its task run once (at most a
task in flight at the kill runs twice: its result could not be recorded).

On an embedded server, whose clock the test moves: a schedule's runs get the version's
timeout as their deadline, as runs started by hand do, and time out when they overrun.
"""

from __future__ import annotations

import signal
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import pytest

from aiki_client import Client
from aiki_core import (
    NotFoundError,
    OverlapPolicy,
    PayloadValidationError,
    RunStatus,
    WorkflowFailedError,
)
from aiki_server.testing import free_port
from aiki_workflow import WorkflowRun, workflow
from e2e_app import Greeting, hello_v1
from e2e_support import QUIET, Counters, start_worker

if TYPE_CHECKING:
    from pathlib import Path

    from aiki_core.sdk import ExecutableVersion
    from aiki_core.wire import RunSummary, Schedule
    from aiki_server.testing import EmbeddedServer
    from live_processes import LiveProcesses

EVERY = timedelta(seconds=1)
DOWNTIME = 3.0  # seconds the server stays dead
WAIT = timedelta(seconds=10)

napper = workflow("e2e-scheduled-napper")


async def nap(run: WorkflowRun, hours: int) -> str:
    """Sleep for `hours`, durably."""
    await run.sleep("nap", timedelta(hours=hours))
    return f"slept {hours} h"


timed_nap = napper.v("timed", timeout=timedelta(hours=1))(nap)
untimed_nap = napper.v("untimed")(nap)


@pytest.fixture
def workflows() -> list[ExecutableVersion]:
    """What the root conftest's `worker` fixture runs."""
    return [timed_nap, untimed_nap]


async def _runs_of(client: Client, schedule: Schedule) -> list[RunSummary]:
    """The runs the schedule started, oldest occurrence first."""
    page = await client.list_runs(workflow=schedule.workflow, limit=500)
    prefix = f"schedule:{schedule.id}:"
    mine = [r for r in page.runs if (r.reference_id or "").startswith(prefix)]
    return sorted(mine, key=lambda r: _occurrence(schedule, r))


def _occurrence(schedule: Schedule, run: RunSummary) -> int:
    assert run.reference_id is not None
    return int(run.reference_id.rsplit(":", 1)[1])


async def _wait_for_runs(client: Client, schedule: Schedule, count: int) -> list[RunSummary]:
    with anyio.fail_after(30):
        while len(runs := await _runs_of(client, schedule)) < count:  # noqa: ASYNC110 - polls the API
            await anyio.sleep(0.1)
    return runs


@pytest.mark.slow
async def test_a_schedule_every_second_survives_a_server_restart_without_duplicates(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    counters = Counters(tmp_path / "counters")
    port = free_port()
    await start_worker(processes, f"http://127.0.0.1:{port}", counters)
    server = await processes.start_server(db_url, port=port)
    async with Client(server.base_url, logger=QUIET) as client:
        schedule = await client.schedules.create(
            "tick", hello_v1, Greeting(name="tick"), every=EVERY, overlap="allow"
        )
        assert schedule.overlap is OverlapPolicy.ALLOW
        assert schedule.input == {"name": "tick", "times": 1}
        same = await client.schedules.create(
            "tick", hello_v1, Greeting(name="tick"), every=EVERY, overlap="allow"
        )
        assert same.id == schedule.id
        before = await _wait_for_runs(client, schedule, 2)

        server.kill()
        assert await server.wait() == -signal.SIGKILL
        await anyio.sleep(DOWNTIME)
        restarted = await processes.start_server(db_url, port=port)
        assert restarted.base_url == server.base_url
        runs = await _wait_for_runs(client, schedule, len(before) + 3)
        paused = await client.schedules.pause(schedule.id)
        assert paused.paused
        runs = await _runs_of(client, schedule)  # a run may have started during the pause

        occurrences = [_occurrence(schedule, r) for r in runs]
        assert len(set(occurrences)) == len(occurrences), occurrences
        assert len({r.id for r in runs}) == len(runs)
        created_ms = round(schedule.created_at.timestamp() * 1000)
        every_ms = int(EVERY.total_seconds() * 1000)
        assert all((o - created_ms) % every_ms == 0 and o > created_ms for o in occurrences)
        # the dead server missed about DOWNTIME occurrences: one catch-up, no backlog
        gaps = [b - a for a, b in zip(occurrences, occurrences[1:], strict=False)]
        assert max(gaps) >= (DOWNTIME - 1) * 1000, gaps
        assert len(occurrences) < (occurrences[-1] - occurrences[0]) // every_ms, occurrences

        for run in runs:
            handle = client.run_handle(run.id, hello_v1.decode_result)
            greeted = await handle.result(timeout=timedelta(seconds=30))
            assert greeted.run_id == run.id
        assert len(runs) <= counters.count("greet-tick") <= len(runs) + 1
        last = await client.schedules.get(schedule.id)
        assert last.last_run_id == runs[-1].id

        listed = await client.schedules.list(limit=10)
        assert [s.id for s in listed.schedules] == [schedule.id]
        resumed = await client.schedules.resume(schedule.id)
        assert not resumed.paused
        assert resumed.next_fire_at is not None
        deleted = await client.schedules.delete(schedule.id)
        assert deleted.id == schedule.id
        with pytest.raises(NotFoundError):
            await client.schedules.get(schedule.id)
        # its runs stay (and the resume may have started one more)
        assert {r.id for r in runs} <= {r.id for r in await _runs_of(client, schedule)}
        assert (await client.run_handle(runs[0].id).status()) is RunStatus.COMPLETED


@pytest.mark.slow
async def test_create_checks_the_schedule_before_sending_it(
    db_url: str, processes: LiveProcesses
) -> None:
    server = await processes.start_server(db_url)
    async with Client(server.base_url, logger=QUIET) as client:
        with pytest.raises(PayloadValidationError, match="exactly one of cron and every"):
            await client.schedules.create(
                "both", hello_v1, Greeting(name="x"), cron="* * * * *", every=EVERY
            )
        with pytest.raises(PayloadValidationError, match="cron") as bad_cron:
            await client.schedules.create("bad", hello_v1, Greeting(name="x"), cron="61 * * * *")
        assert bad_cron.value.errors[0]["loc"] == ["body", "cron"]
        assert (await client.schedules.list()).schedules == []


@pytest.mark.usefixtures("worker")
async def test_a_scheduled_run_gets_the_versions_timeout_and_times_out(
    server: EmbeddedServer, client: Client
) -> None:
    daily = timedelta(days=1)
    timed = await client.schedules.create("timed", timed_nap, 2, every=daily)
    untimed = await client.schedules.create("untimed", untimed_nap, 2, every=daily)
    assert timed.timeout == timedelta(hours=1)
    assert untimed.timeout is None
    assert (await client.schedules.get(timed.id)).timeout == timedelta(hours=1)
    given = await client.schedules.create(
        "given", untimed_nap, 2, every=daily, timeout=timedelta(minutes=5)
    )
    assert given.timeout == timedelta(minutes=5)  # `timeout=` stands in for the version's
    await client.schedules.delete(given.id)

    server.advance(daily)
    (overrun,) = await _wait_for_runs(client, timed, 1)
    (free,) = await _wait_for_runs(client, untimed, 1)
    assert overrun.deadline_at == overrun.created_at + timedelta(hours=1)
    assert free.deadline_at is None
    overrun_handle = client.run_handle(overrun.id, timed_nap.decode_result)
    free_handle = client.run_handle(free.id, untimed_nap.decode_result)
    for handle in (overrun_handle, free_handle):
        await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)

    server.advance(timedelta(hours=1))
    with pytest.raises(WorkflowFailedError) as failed:
        await overrun_handle.result(timeout=WAIT)
    assert failed.value.error.type.endswith("WorkflowTimeoutError")
    assert await free_handle.status() is RunStatus.SLEEPING
    server.advance(timedelta(hours=1))
    assert await free_handle.result(timeout=WAIT) == "slept 2 h"
