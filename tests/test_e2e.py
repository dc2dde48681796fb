"""End to end: a real server process, a real worker process, and the client of the test.

Each test runs on SQLite and on PostgreSQL (`db_url`). The worker runs
`tests/e2e_app.py`, whose task bodies count their executions in files, so a test
sees how often a body really ran in the other process.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import httpx
import pytest

from aiki_client import Client
from aiki_core import (
    PayloadValidationError,
    ReferenceIdConflictError,
    RemoteError,
    RunStatus,
    TaskStatus,
    WorkflowFailedError,
)
from e2e_app import (
    SLOW_TASK_TIMEOUT,
    Greeted,
    Greeting,
    Job,
    Lookup,
    failing_v1,
    flaky_v1,
    hello_v1,
    timeout_v1,
)
from e2e_support import Stack, open_stack

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from aiki_core.wire import RunDetail
    from live_processes import LiveProcesses

RESULT_TIMEOUT = timedelta(seconds=30)


@pytest.fixture
async def stack(db_url: str, processes: LiveProcesses, tmp_path: Path) -> AsyncIterator[Stack]:
    """A fresh server on `db_url` with one worker process, and a client."""
    async with open_stack(db_url, processes, tmp_path) as opened:
        yield opened


def _run_statuses(detail: RunDetail) -> list[str]:
    return [step.to_status for step in detail.history if step.entity == "run"]


async def test_result_status_and_detail_of_a_run(stack: Stack) -> None:
    handle = await hello_v1.start(stack.client, Greeting(name="ada", times=2))

    result = await handle.result(timeout=RESULT_TIMEOUT)

    assert isinstance(result, Greeted)
    assert result == Greeted(message="hello ada! hello ada!", run_id=handle.id)
    assert await handle.status() is RunStatus.COMPLETED
    detail = await handle.detail()
    assert (detail.id, detail.workflow, detail.version) == (handle.id, "e2e-hello", "1.0.0")
    assert detail.status is RunStatus.COMPLETED
    assert detail.result == {"message": "hello ada! hello ada!", "run_id": handle.id}
    assert detail.error is None
    assert detail.finished_at is not None
    (task,) = detail.tasks
    assert task.name == "greet"
    assert task.status is TaskStatus.COMPLETED
    assert task.input == {"name": "ada", "times": 2}
    assert task.result == "hello ada! hello ada!"
    assert [(a.attempt, a.status) for a in task.attempts] == [(1, TaskStatus.COMPLETED)]
    assert _run_statuses(detail) == ["queued", "running", "completed"]
    assert stack.counters.count("greet-ada") == 1


async def test_start_is_idempotent_by_reference_id(stack: Stack) -> None:
    bob = Greeting(name="bob")
    first = await hello_v1.start(stack.client, bob, reference_id="greet-bob")
    again = await hello_v1.start(stack.client, bob, reference_id="greet-bob")
    assert again.id == first.id

    result = await again.result(timeout=RESULT_TIMEOUT)
    assert result == Greeted(message="hello bob!", run_id=first.id)
    # once the run is over, too
    late = await hello_v1.start(stack.client, bob, reference_id="greet-bob")
    assert late.id == first.id
    # the same reference id with another payload is a conflict, not a new run
    with pytest.raises(ReferenceIdConflictError) as conflict:
        await hello_v1.start(stack.client, Greeting(name="eve"), reference_id="greet-bob")
    assert conflict.value.run_id == first.id

    page = await stack.client.list_runs(workflow="e2e-hello")
    assert [(run.id, run.reference_id) for run in page.runs] == [(first.id, "greet-bob")]
    assert stack.counters.count("greet-bob") == 1
    assert stack.counters.count("greet-eve") == 0


async def test_wrong_payload_is_refused_before_any_request(stack: Stack) -> None:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    async with Client("http://127.0.0.1:9", transport=httpx.MockTransport(record)) as offline:
        with pytest.raises(PayloadValidationError) as caught:
            await hello_v1.start(offline, {"name": "ada", "times": "many"})  # type: ignore[arg-type]
    assert sent == [], "the client sent a request for an invalid payload"
    error = caught.value
    assert [problem["loc"] for problem in error.errors] == [["times"]]
    assert "times" in error.message
    assert "e2e-hello" in error.message

    # against the live server: refused the same way, and no run exists
    with pytest.raises(PayloadValidationError) as missing:
        await hello_v1.start(stack.client, {"times": 3}, reference_id="x")  # type: ignore[arg-type]
    assert [problem["loc"] for problem in missing.value.errors] == [["name"]]
    page = await stack.client.list_runs(workflow="e2e-hello")
    assert page.runs == []


async def test_task_that_fails_twice_then_succeeds(stack: Stack) -> None:
    handle = await flaky_v1.start(stack.client, Job(key="j1"))

    assert await handle.result(timeout=RESULT_TIMEOUT) == "j1 done on attempt 3"

    detail = await handle.detail()
    assert detail.status is RunStatus.COMPLETED
    (task,) = detail.tasks
    assert (task.name, task.status) == ("flaky", TaskStatus.COMPLETED)
    assert [a.attempt for a in task.attempts] == [1, 2, 3]
    assert [a.status for a in task.attempts] == [
        TaskStatus.AWAITING_RETRY,
        TaskStatus.AWAITING_RETRY,
        TaskStatus.COMPLETED,
    ]
    for number, attempt in enumerate(task.attempts[:2], start=1):
        assert attempt.error is not None
        assert attempt.error.type == "ConnectionError"
        assert attempt.error.message == f"the service of j1 is down (call {number})"
    assert task.attempts[2].error is None
    assert stack.counters.count("flaky-j1") == 3


async def test_task_timeout_fails_the_run(stack: Stack) -> None:
    handle = await timeout_v1.start(stack.client, Job(key="t1"))

    with pytest.raises(WorkflowFailedError) as caught:
        await handle.result(timeout=RESULT_TIMEOUT)

    timeout_ms = int(SLOW_TASK_TIMEOUT.total_seconds() * 1000)
    error = caught.value.error
    assert caught.value.run_id == handle.id
    described = [f"{e.type}: {e.message}" for e in error.causes()]
    assert any(
        e.type.endswith("TaskTimeoutError") and f"timed out after {timeout_ms} ms" in e.message
        for e in error.causes()
    ), described
    assert "'slow'" in error.message, described
    assert await handle.status() is RunStatus.FAILED
    detail = await handle.detail()
    (task,) = detail.tasks
    assert (task.name, task.status) == ("slow", TaskStatus.FAILED)
    (attempt,) = task.attempts
    assert attempt.status is TaskStatus.FAILED
    assert attempt.error is not None
    assert attempt.error.type.endswith("TaskTimeoutError")
    assert stack.counters.count("slow-t1") == 1


async def test_workflow_error_reaches_result_with_its_cause(stack: Stack) -> None:
    assert (
        await (await failing_v1.start(stack.client, Lookup(sku="pear"))).result(
            timeout=RESULT_TIMEOUT
        )
        == 4
    )
    handle = await failing_v1.start(stack.client, Lookup(sku="kiwi"))

    with pytest.raises(WorkflowFailedError) as caught:
        await handle.result(timeout=RESULT_TIMEOUT)

    error = caught.value.error
    assert error.type.endswith("ValueError")
    assert error.message == "no price for 'kiwi'"
    assert error.stack is not None and "failing_v1" in error.stack
    assert error.cause is not None
    assert error.cause.type == "KeyError"
    assert error.cause.message == "'kiwi'"
    assert error.cause.cause is None
    # the same chain, as Python exceptions
    remote = caught.value.__cause__
    assert isinstance(remote, RemoteError)
    assert remote.type.endswith("ValueError")
    assert isinstance(remote.__cause__, RemoteError)
    assert remote.__cause__.type == "KeyError"
    detail = await handle.detail()
    assert detail.status is RunStatus.FAILED
    assert detail.error == error
