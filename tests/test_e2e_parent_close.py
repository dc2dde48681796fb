"""Parent-close policies from a workflow's code: `start_child(..., parent_close_policy=...)`.

An embedded server (SQLite and PostgreSQL), a client over httpx's ASGI transport and
a real `Worker`, in the test's process.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from aiki_core import (
    ConsoleLogger,
    LogLevel,
    ParentClosePolicy,
    RunId,
    RunStatus,
    WorkflowFailedError,
)
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, event, workflow

if TYPE_CHECKING:
    from aiki_client import Client

QUIET = ConsoleLogger(LogLevel.ERROR)
WAIT = timedelta(seconds=20)

go = event("go", bool)
waiter = workflow("pc-waiter")


@waiter.v("1")
async def waiter_v1(run: WorkflowRun, name: str) -> str:
    await go.wait(run)
    return name


parent = workflow("pc-parent")


@parent.v("1")
async def parent_v1(run: WorkflowRun, fail: bool) -> list[str]:
    """Start one waiting child per policy, then end (complete or fail) without them."""
    ids = []
    for policy in ParentClosePolicy:
        child = await waiter_v1.start_child(run, policy.value, parent_close_policy=policy)
        ids.append(str(child.id))
    if fail:
        raise ValueError(" ".join(ids))
    return ids


@pytest.mark.parametrize("fail", [False, True])
async def test_each_policy_applies_when_the_parent_ends(client: Client, fail: bool) -> None:
    async with Worker(client, [parent_v1, waiter_v1], logger=QUIET):
        handle = await parent_v1.start(client, fail)
        if fail:
            with pytest.raises(WorkflowFailedError) as failed:
                await handle.result(timeout=WAIT)
            ids = failed.value.error.message.split()
        else:
            ids = await handle.result(timeout=WAIT)
        terminated, requested, abandoned = (client.run_handle(RunId(i)) for i in ids)
        # the requested cancel of a child that ran goes through its cleanup first
        for cancelled in (terminated, requested):
            await cancelled.wait_for_status([RunStatus.CANCELLED], timeout=WAIT)
            detail = await cancelled.detail()
            assert detail.error is not None
            assert f"parent run {handle.id} ended as" in detail.error.message
        kept = await abandoned.detail()
        assert kept.status is not RunStatus.CANCELLED
        assert kept.parent_close_policy is ParentClosePolicy.ABANDON
        # the abandoned child goes on, and completes on its own
        await abandoned.send_event(go, True)
        assert await abandoned.result(timeout=WAIT) == "abandon"
