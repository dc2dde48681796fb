"""Bounds of the worker-replayed dry run: a report over the body limit, many runs at once.

The server's body limit is small here (`server_settings`), so the report of a run of
a few dozen task calls does not fit in one request; everything else does.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import pytest

from aiki_core import RunStatus
from aiki_server import ServerSettings
from aiki_task import task
from aiki_worker._dry_run import REPLAYS_AT_ONCE
from aiki_workflow import WorkflowRun, workflow

if TYPE_CHECKING:
    from aiki_client import Client
    from aiki_core.sdk import ExecutableVersion, RunExecution
    from aiki_core.wire import DirectivesRequest, DirectivesResponse, RunAction

WAIT = timedelta(seconds=20)
CALLS = 30
LONG_NAME = "db-" + "a-task-with-a-long-name-" * 6


@task(LONG_NAME)
async def step(i: int) -> int:
    """One of the run's many task calls."""
    return i


many = workflow("db-many")


@many.v("1.0.0")
async def many_v1(run: WorkflowRun, _: None) -> None:
    """Call the task `CALLS` times, then sleep a day."""
    for i in range(CALLS):
        await step.start(run, i)
    await run.sleep("later", timedelta(days=1))


@many.v("1.0.1")
async def many_v1_0_1(run: WorkflowRun, _: None) -> None:
    """1.0.0's code again: the replay reuses every call, a report too large to send."""
    for i in range(CALLS):
        await step.start(run, i)
    await run.sleep("later", timedelta(days=1))


@task("db-note")
async def note(i: int) -> int:
    """The one task call of a `db-few` run."""
    return i


few = workflow("db-few")
REPLAYING: list[int] = [0, 0]
"""The replays of 1.0.1 going on now, and the most at once."""
GATE: list[anyio.Event] = []
"""What a replay of 1.0.1 waits for (set by the test)."""


@few.v("1.0.0")
async def few_v1(run: WorkflowRun, i: int) -> None:
    """One task call, then a day's sleep."""
    await note.start(run, i)
    await run.sleep("later", timedelta(days=1))


@few.v("1.0.1")
async def few_v1_0_1(run: WorkflowRun, i: int) -> None:
    """1.0.0's code, behind the test's gate (its replays are counted)."""
    REPLAYING[0] += 1
    REPLAYING[1] = max(REPLAYING)
    try:
        await GATE[0].wait()
    finally:
        REPLAYING[0] -= 1
    await note.start(run, i)
    await run.sleep("later", timedelta(days=1))


class Broken:
    """Version 1.0.2 of `db-few`, whose execution raises a message no column holds (a NUL)."""

    workflow = "db-few"
    version = "1.0.2"

    async def execute(self, execution: RunExecution) -> RunAction:
        raise RuntimeError(f"bad\x00news {execution.claim.input}")


@pytest.fixture
def server_settings() -> ServerSettings:
    """A body limit the report of `CALLS` recorded calls is over."""
    return ServerSettings(max_body_bytes=4096)


@pytest.fixture
def workflows() -> list[ExecutableVersion]:
    """What the root conftest's `worker` fixture runs."""
    return [many_v1, many_v1_0_1, few_v1, few_v1_0_1, Broken()]


@pytest.mark.usefixtures("worker")
async def test_a_report_over_the_body_limit_is_answered_as_a_failure(client: Client) -> None:
    handle = await many_v1.start(client, None)
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)

    answer = await client.migrate_runs("db-many", "1.0.0", "1.0.1", dry_run=True, wait=WAIT)

    # the job is answered (not handed out and replayed again until the wait ran out),
    # and says why it holds no report
    assert answer.dry_runs == []
    [failed] = answer.not_replayed
    assert failed.run_id == handle.id
    assert "within" not in failed.reason
    assert "limit of 4096 bytes" in failed.reason
    assert "outcome waits" in failed.reason  # the replay's, all the same


@pytest.mark.usefixtures("worker")
async def test_a_worker_replays_no_more_dry_run_jobs_at_once_than_it_has_room_for(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    GATE[:] = [anyio.Event()]
    REPLAYING[:] = [0, 0]
    handles = [await few_v1.start(client, i) for i in range(REPLAYS_AT_ONCE + 2)]
    for handle in handles:
        await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    polls: list[tuple[DirectivesRequest, DirectivesResponse]] = []
    full = anyio.Event()
    directives = client.directives

    async def noted(request: DirectivesRequest) -> DirectivesResponse:
        if len(request.dry_runs) >= REPLAYS_AT_ONCE:
            full.set()
        answer = await directives(request)
        polls.append((request, answer))
        return answer

    monkeypatch.setattr(client, "directives", noted)
    answers = []

    async def dry_run() -> None:
        answers.append(await client.migrate_runs("db-few", "1.0.0", "1.0.1", dry_run=True))

    async with anyio.create_task_group() as tg:
        tg.start_soon(dry_run)
        with anyio.fail_after(WAIT.total_seconds()):
            await full.wait()  # the worker asked again, with its hands full
        GATE[0].set()

    [answer] = answers
    assert answer.not_replayed == []
    assert sorted(r.run_id for r in answer.dry_runs) == sorted(h.id for h in handles)
    assert REPLAYING[1] <= REPLAYS_AT_ONCE
    # no poll made with its hands full was handed another job
    assert all(not a.dry_runs for r, a in polls if len(r.dry_runs) >= REPLAYS_AT_ONCE)


@pytest.mark.usefixtures("worker")
async def test_a_replay_raising_a_message_with_a_nul_is_reported_and_the_worker_goes_on(
    client: Client,
) -> None:
    handle = await few_v1.start(client, 7)
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)

    broken = await client.migrate_runs("db-few", "1.0.0", "1.0.2", dry_run=True, wait=WAIT)

    [failed] = broken.not_replayed
    assert failed.run_id == handle.id
    assert "RuntimeError: bad\\x00news 7" in failed.reason  # the NUL escaped
    # the worker lives on: its directives poll hands it the next dry run
    GATE[:] = [anyio.Event()]
    GATE[0].set()
    fine = await client.migrate_runs("db-few", "1.0.0", "1.0.1", dry_run=True, wait=WAIT)
    assert [(r.run_id, r.outcome) for r in fine.dry_runs] == [(handle.id, "waits")]
