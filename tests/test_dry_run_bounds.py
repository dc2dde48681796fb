"""A worker-replayed dry run of a run whose report is over the server's body limit.

The server's body limit is small here (`server_settings`), so the report of a run of
a few dozen task calls does not fit in one request; everything else does.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from aiki_core import RunStatus
from aiki_server import ServerSettings
from aiki_task import task
from aiki_workflow import WorkflowRun, workflow

if TYPE_CHECKING:
    from aiki_client import Client
    from aiki_core.sdk import ExecutableVersion

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


@pytest.fixture
def server_settings() -> ServerSettings:
    """A body limit the report of `CALLS` recorded calls is over."""
    return ServerSettings(max_body_bytes=4096)


@pytest.fixture
def workflows() -> list[ExecutableVersion]:
    """What the root conftest's `worker` fixture runs."""
    return [many_v1, many_v1_0_1]


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
