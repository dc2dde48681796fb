"""Worker-side HTTP API: claim, record tasks, start children, transition runs."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from server_api import (
    FAR_FUTURE,
    START_MS,
    claim,
    claim_one,
    error_of,
    get_run,
    iso,
    record_statements,
    start,
    task_record,
    timer_pass,
    transition,
)

if TYPE_CHECKING:
    import httpx

    from server_api import Harness, HarnessFactory


async def started_and_claimed(client: httpx.AsyncClient, **fields: Any) -> tuple[str, int]:
    """Start a run and claim it; its id and the claim's revision."""
    run = await start(client, **fields)
    claimed = await claim_one(
        client, run["workflow"], run["version"], pool=fields.get("pool", "default")
    )
    assert claimed["run"]["id"] == run["id"]
    return run["id"], claimed["run"]["revision"]


async def record(
    client: httpx.AsyncClient, run_id: str, revision: int, **fields: Any
) -> httpx.Response:
    """Record a task attempt (task `charge`, first call, attempt 1 unless given)."""
    return await client.post(f"/runs/{run_id}/tasks", json=task_body(revision, **fields))


def task_body(revision: int, **fields: Any) -> dict[str, Any]:
    """The body of `record`."""
    return {
        "revision": revision,
        "name": "charge",
        "address": "charge:9f2c",
        "occurrence": 0,
        "attempt": 1,
        **fields,
    }


async def start_child(
    client: httpx.AsyncClient, parent_id: str, revision: int, **fields: Any
) -> httpx.Response:
    """Start a child run (workflow `child`, version `1`, first call unless given)."""
    body = {
        "revision": revision,
        "address": "child:77",
        "occurrence": 0,
        "workflow": "child",
        "version": "1",
        **fields,
    }
    return await client.post(f"/runs/{parent_id}/children", json=body)


def error(message: str = "boom", **fields: Any) -> dict[str, Any]:
    """An `ErrorInfo` as JSON."""
    return {"type": "ValueError", "message": message, **fields}


def moves(run: dict[str, Any]) -> list[tuple[str | None, str]]:
    """The run's own status changes, oldest first."""
    return [(h["from_status"], h["to_status"]) for h in run["history"] if h["entity"] == "run"]


# -- claim -------------------------------------------------------------------------------


async def test_claim_returns_the_run_running_at_revision_1_with_replay_data(
    server: httpx.AsyncClient,
) -> None:
    run = await start(server, input={"order": 12})
    r = await server.post(
        "/claims",
        json={
            "worker_id": "worker-a",
            "capabilities": [{"workflow": "w", "version": "1", "pool": "default"}],
            "max_runs": 5,
            "wait": 0,
        },
    )
    assert r.status_code == 200, r.text
    runs = r.json()["runs"]
    assert len(runs) == 1
    claimed = runs[0]
    assert claimed["run"]["id"] == run["id"]
    assert claimed["run"]["status"] == "running"
    assert claimed["run"]["revision"] == 1
    assert claimed["input"] == {"order": 12}
    for key in ("tasks", "sleeps", "event_waits", "events", "children"):
        assert claimed[key] == []
    got = await get_run(server, run["id"])
    assert got["status"] == "running"
    assert got["revision"] == 1
    assert moves(got) == [(None, "queued"), ("queued", "running")]
    # nothing left to claim
    assert await claim(server) == []


async def test_a_reclaimed_run_replays_what_it_recorded(server: httpx.AsyncClient) -> None:
    run_id, revision = await started_and_claimed(server, input=3)
    r = await record(server, run_id, revision, status="completed", input={"a": 1}, result=9)
    assert r.status_code == 200, r.text
    r = await transition(server, run_id, revision, {"kind": "release"})
    assert r.status_code == 200, r.text
    again = await claim_one(server)
    assert again["run"]["revision"] == revision + 1
    assert again["input"] == 3
    assert [(t["address"], t["occurrence"], t["status"], t["result"]) for t in again["tasks"]] == [
        ("charge:9f2c", 0, "completed", 9)
    ]


async def test_one_claim_replays_first_claims_and_reclaims_alike(
    server: httpx.AsyncClient,
) -> None:
    # a run claimed before, with a task on record, and a new run with an early event
    old_id, revision = await started_and_claimed(server)
    r = await record(server, old_id, revision, status="completed", result=9)
    assert r.status_code == 200, r.text
    r = await transition(server, old_id, revision, {"kind": "release"})
    assert r.status_code == 200, r.text
    new = await start(server)
    r = await server.post(f"/runs/{new['id']}/events", json={"name": "go", "data": "early"})
    assert r.status_code == 200, r.text

    claimed = {c["run"]["id"]: c for c in await claim(server, max_runs=5)}
    assert set(claimed) == {old_id, new["id"]}
    assert [(t["status"], t["result"]) for t in claimed[old_id]["tasks"]] == [("completed", 9)]
    assert claimed[old_id]["events"] == []
    assert [(e["name"], e["data"]) for e in claimed[new["id"]]["events"]] == [("go", "early")]
    for key in ("tasks", "sleeps", "event_waits", "children"):
        assert claimed[new["id"]][key] == []


TRACE = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "vendor=opaque",
}


async def test_a_trace_context_goes_with_the_run_its_children_and_its_continuation(
    server: httpx.AsyncClient,
) -> None:
    """Each claim hands the worker the trace context its run was started with."""
    await start(server, workflow="plain")
    assert (await claim_one(server, "plain"))["trace_context"] is None

    run_id, revision = await started_and_claimed(server, trace_context=TRACE)
    child = await start_child(server, run_id, revision, trace_context={"traceparent": "00-c"})
    assert child.status_code == 201, child.text
    assert (await claim_one(server, "child"))["trace_context"] == {"traceparent": "00-c"}

    # a claim after the run was let go hands it out again; a continuation keeps it
    assert (await transition(server, run_id, revision, {"kind": "release"})).status_code == 200
    again = await claim_one(server)
    assert again["trace_context"] == TRACE
    follow_on = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    action = {"kind": "continue", "run_id": follow_on, "input": 2}
    answer = await transition(server, run_id, again["run"]["revision"], action)
    assert answer.status_code == 200, answer.text
    continued = await claim_one(server)
    assert continued["run"]["id"] == follow_on
    assert continued["trace_context"] == TRACE


@pytest.mark.parametrize(
    "trace_context",
    [
        {"Traceparent": "00-a"},  # an upper-case name
        {"traceparent": "00-\u00e9"},  # not visible ASCII
        {"traceparent": "x" * 1025},
        {f"k{i}": "v" for i in range(9)},
        {"traceparent": 1},
    ],
)
async def test_a_malformed_trace_context_is_refused(
    server: httpx.AsyncClient, trace_context: dict[str, Any]
) -> None:
    body = {"workflow": "w", "version": "1", "trace_context": trace_context}
    r = await server.post("/runs", json=body)
    error_of(r, 422, "payload_validation")


async def test_claim_hands_out_only_declared_triples(server: httpx.AsyncClient) -> None:
    await start(server, workflow="w", version="2")
    await start(server, workflow="w", version="1", pool="gpu")
    assert await claim(server, "w", "1") == []
    assert await claim(server, "other", "2") == []
    assert (await claim_one(server, "w", "2"))["run"]["version"] == "2"
    gpu = await claim_one(server, "w", "1", pool="gpu")
    assert gpu["run"]["pool"] == "gpu"


# -- tasks -------------------------------------------------------------------------------


async def test_a_task_recorded_completed_in_one_request(server: httpx.AsyncClient) -> None:
    run_id, revision = await started_and_claimed(server)
    r = await record(
        server, run_id, revision, status="completed", input={"amount": 10}, result={"id": "tx1"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"
    task_id = r.json()["task_id"]

    got = await get_run(server, run_id)
    assert len(got["tasks"]) == 1
    task = got["tasks"][0]
    assert task["id"] == task_id
    assert task["name"] == "charge"
    assert task["address"] == "charge:9f2c"
    assert task["occurrence"] == 0
    assert task["status"] == "completed"
    assert task["input"] == {"amount": 10}
    assert task["result"] == {"id": "tx1"}
    assert task["error"] is None
    assert task["finished_at"] is not None
    assert [(a["attempt"], a["status"]) for a in task["attempts"]] == [(1, "completed")]
    assert task["attempts"][0]["finished_at"] is not None
    task_rows = [h for h in got["history"] if h["entity"] == "task"]
    assert [(h["entity_id"], h["from_status"], h["to_status"]) for h in task_rows] == [
        (task_id, None, "completed")
    ]
    assert got["status"] == "running"


async def test_a_task_recorded_running_then_completed(server: httpx.AsyncClient) -> None:
    run_id, revision = await started_and_claimed(server)
    r = await record(server, run_id, revision, status="running", input=[1])
    assert r.status_code == 200, r.text
    task = (await get_run(server, run_id))["tasks"][0]
    assert task["status"] == "running"
    assert [(a["attempt"], a["status"], a["finished_at"]) for a in task["attempts"]] == [
        (1, "running", None)
    ]
    r = await record(server, run_id, revision, status="completed", result="done")
    assert r.status_code == 200, r.text
    task = (await get_run(server, run_id))["tasks"][0]
    assert task["status"] == "completed"
    assert task["input"] == [1]
    assert task["result"] == "done"
    assert [(a["attempt"], a["status"]) for a in task["attempts"]] == [(1, "completed")]


async def test_a_task_that_fails_twice_then_completes(harness: Harness) -> None:
    c = harness.client
    run_id, revision = await started_and_claimed(c)
    retry_1 = iso(START_MS + 1_000)
    r = await record(
        c,
        run_id,
        revision,
        status="awaiting_retry",
        input={"n": 1},
        error=error("first"),
        retry_at=retry_1,
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "awaiting_retry"
    task = (await get_run(c, run_id))["tasks"][0]
    assert task["status"] == "awaiting_retry"
    assert task["next_attempt_at"] == retry_1
    assert task["error"]["message"] == "first"

    harness.advance(1_000)
    retry_2 = iso(START_MS + 3_000)
    r = await record(
        c,
        run_id,
        revision,
        status="awaiting_retry",
        attempt=2,
        error=error("second"),
        retry_at=retry_2,
    )
    assert r.status_code == 200, r.text
    task = (await get_run(c, run_id))["tasks"][0]
    assert task["next_attempt_at"] == retry_2
    assert task["error"]["message"] == "second"

    harness.advance(2_000)
    r = await record(c, run_id, revision, status="completed", attempt=3, result=7)
    assert r.status_code == 200, r.text

    got = await get_run(c, run_id)
    assert len(got["tasks"]) == 1
    task = got["tasks"][0]
    assert task["status"] == "completed"
    assert task["result"] == 7
    assert task["error"] is None
    assert task["next_attempt_at"] is None
    assert task["input"] == {"n": 1}
    attempts = task["attempts"]
    assert len(attempts) == 3
    assert [(a["attempt"], a["status"]) for a in attempts] == [
        (1, "awaiting_retry"),
        (2, "awaiting_retry"),
        (3, "completed"),
    ]
    assert [None if a["error"] is None else a["error"]["message"] for a in attempts] == [
        "first",
        "second",
        None,
    ]
    assert [a["started_at"] for a in attempts] == [
        iso(START_MS),
        iso(START_MS + 1_000),
        iso(START_MS + 3_000),
    ]
    task_rows = [h for h in got["history"] if h["entity"] == "task"]
    assert [(h["from_status"], h["to_status"]) for h in task_rows] == [
        (None, "awaiting_retry"),
        ("awaiting_retry", "awaiting_retry"),
        ("awaiting_retry", "completed"),
    ]


async def test_a_task_that_fails_for_good(server: httpx.AsyncClient) -> None:
    run_id, revision = await started_and_claimed(server)
    r = await record(server, run_id, revision, status="failed", error=error("nope"))
    assert r.status_code == 200, r.text
    task = (await get_run(server, run_id))["tasks"][0]
    assert task["status"] == "failed"
    assert task["error"]["message"] == "nope"
    assert task["finished_at"] is not None
    # a failed task is over: another attempt is illegal
    r = await record(server, run_id, revision, status="completed", attempt=2, result=1)
    error_of(r, 409, "illegal_transition")


@pytest.mark.parametrize("path", ["tasks", "transition"])
async def test_the_same_record_again_is_taken_and_another_result_is_409(
    server: httpx.AsyncClient, path: str
) -> None:
    # a worker that lost the answer to its record sends it again, alone or with its report
    run_id, revision = await started_and_claimed(server)
    r = await record(server, run_id, revision, status="completed", result={"n": 1})
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    before = await get_run(server, run_id)

    async def send(result: int) -> httpx.Response:
        fields = {"status": "completed", "result": {"n": result}}
        if path == "tasks":
            return await record(server, run_id, revision, **fields)
        body = {
            "revision": revision,
            "action": {"kind": "release"},
            "tasks": [task_body(revision, **fields)],
        }
        return await server.post(f"/runs/{run_id}/transition", json=body)

    error_of(await send(2), 409, "illegal_transition")
    assert await get_run(server, run_id) == before
    r = await send(1)
    assert r.status_code == 200, r.text
    if path == "tasks":
        assert r.json() == {"task_id": task_id, "status": "completed", "directive": "continue"}
        assert await get_run(server, run_id) == before  # not even a history row
    else:
        assert r.json()["run"]["status"] == "queued"
    assert (await get_run(server, run_id))["tasks"][0]["result"] == {"n": 1}


async def test_an_illegal_task_transition_is_409_and_changes_nothing(
    server: httpx.AsyncClient,
) -> None:
    run_id, revision = await started_and_claimed(server)
    r = await record(server, run_id, revision, status="completed", result=1)
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    before = await get_run(server, run_id)
    r = await record(server, run_id, revision, status="running", attempt=2)
    details = error_of(r, 409, "illegal_transition")
    assert details["entity"] == "task"
    assert details["entity_id"] == task_id
    assert details["current"] == "completed"
    assert details["requested"] == "running"
    assert await get_run(server, run_id) == before


@pytest.mark.parametrize("stale", [0, 99])
async def test_a_stale_revision_is_409_and_changes_nothing(
    server: httpx.AsyncClient, stale: int
) -> None:
    run_id, revision = await started_and_claimed(server)
    assert revision == 1
    r = await record(server, run_id, revision, status="completed", result=1)
    assert r.status_code == 200, r.text
    before = await get_run(server, run_id)

    attempts = [
        await record(server, run_id, stale, status="completed", address="other:1", result=2),
        await record(server, run_id, stale, status="running", address="charge:9f2c", attempt=2),
        await transition(server, run_id, stale, {"kind": "complete", "result": 3}),
        await transition(server, run_id, stale, {"kind": "release"}),
        await transition(server, run_id, stale, {"kind": "fail", "error": error()}),
        await transition(
            server,
            run_id,
            stale,
            {
                "kind": "suspend",
                "waits": [{"kind": "sleep", "name": "s", "occurrence": 0, "wake_at": FAR_FUTURE}],
            },
        ),
        await start_child(server, run_id, stale),
    ]
    for r in attempts:
        details = error_of(r, 409, "stale_revision")
        assert details == {"run_id": run_id, "revision": stale, "current_revision": revision}
    assert await get_run(server, run_id) == before
    # the holder of the current revision can still write
    r = await transition(server, run_id, revision, {"kind": "complete"})
    assert r.status_code == 200, r.text


async def test_writes_to_a_run_that_is_not_running_are_409(server: httpx.AsyncClient) -> None:
    run_id, revision = await started_and_claimed(server)
    r = await transition(server, run_id, revision, {"kind": "complete", "result": 1})
    assert r.status_code == 200, r.text
    before = await get_run(server, run_id)
    attempts = [
        await record(server, run_id, revision, status="completed", result=2),
        await transition(server, run_id, revision, {"kind": "complete", "result": 2}),
        await transition(server, run_id, revision, {"kind": "release"}),
        await start_child(server, run_id, revision),
    ]
    for r in attempts:
        details = error_of(r, 409, "illegal_transition")
        assert details["current"] == "completed"
    assert await get_run(server, run_id) == before


async def test_writes_to_a_queued_run_with_its_revision_are_409(server: httpx.AsyncClient) -> None:
    run_id, revision = await started_and_claimed(server)
    r = await transition(server, run_id, revision, {"kind": "release"})
    assert r.status_code == 200, r.text
    before = await get_run(server, run_id)
    assert before["status"] == "queued"
    r = await record(server, run_id, before["revision"], status="completed", result=2)
    details = error_of(r, 409, "illegal_transition")
    assert details["current"] == "queued"
    r = await transition(server, run_id, before["revision"], {"kind": "complete"})
    error_of(r, 409, "illegal_transition")
    assert await get_run(server, run_id) == before


# -- transitions -------------------------------------------------------------------------


async def test_complete_ends_the_run_with_its_result(server: httpx.AsyncClient) -> None:
    run_id, revision = await started_and_claimed(server)
    r = await transition(server, run_id, revision, {"kind": "complete", "result": {"total": 3}})
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "completed"
    assert r.json()["run"]["finished_at"] is not None
    got = await get_run(server, run_id)
    assert got["status"] == "completed"
    assert got["result"] == {"total": 3}
    assert got["error"] is None
    assert got["finished_at"] is not None
    assert moves(got)[-1] == ("running", "completed")


async def test_fail_ends_the_run_with_its_error_and_causes(server: httpx.AsyncClient) -> None:
    run_id, revision = await started_and_claimed(server)
    failure = {
        "type": "myapp.PaymentError",
        "message": "card declined",
        "stack": "Traceback ...",
        "retryable": False,
        "code": None,
        "details": {"card": "visa"},
        "cause": {
            "type": "ConnectionError",
            "message": "reset by peer",
            "cause": {"type": "OSError", "message": "errno 104"},
        },
    }
    r = await transition(server, run_id, revision, {"kind": "fail", "error": failure})
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "failed"
    got = await get_run(server, run_id)
    assert got["status"] == "failed"
    assert got["finished_at"] is not None
    assert got["result"] is None
    err = got["error"]
    assert (err["type"], err["message"], err["retryable"]) == (
        "myapp.PaymentError",
        "card declined",
        False,
    )
    assert err["details"] == {"card": "visa"}
    assert err["stack"] == "Traceback ..."
    chain = []
    node = err
    while node is not None:
        chain.append((node["type"], node["message"]))
        node = node["cause"]
    assert chain == [
        ("myapp.PaymentError", "card declined"),
        ("ConnectionError", "reset by peer"),
        ("OSError", "errno 104"),
    ]
    assert moves(got)[-1] == ("running", "failed")


async def test_fail_with_retry_at_awaits_a_workflow_retry(harness: Harness) -> None:
    c = harness.client
    run_id, revision = await started_and_claimed(c)
    retry_at = iso(START_MS + 30_000)
    r = await transition(
        c, run_id, revision, {"kind": "fail", "error": error("flaky"), "retry_at": retry_at}
    )
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "awaiting_retry"
    assert r.json()["run"]["attempt"] == 2
    got = await get_run(c, run_id)
    assert got["status"] == "awaiting_retry"
    assert got["attempt"] == 2
    assert got["finished_at"] is None
    assert got["error"]["message"] == "flaky"
    assert await claim(c) == []

    harness.advance(30_000)
    with anyio.fail_after(5):
        r = await c.get(f"/runs/{run_id}/wait", params={"status": "queued", "timeout_ms": 60_000})
    assert r.json()["status"] == "queued"
    again = await claim_one(c)
    assert again["run"]["attempt"] == 2
    assert again["run"]["revision"] == revision + 1


async def test_suspend_on_a_sleep_then_the_timer_requeues_it(harness: Harness) -> None:
    c = harness.client
    run_id, revision = await started_and_claimed(c)
    wake_at = iso(START_MS + 60_000)
    r = await transition(
        c,
        run_id,
        revision,
        {
            "kind": "suspend",
            "waits": [{"kind": "sleep", "name": "nap", "occurrence": 0, "wake_at": wake_at}],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "sleeping"
    got = await get_run(c, run_id)
    assert got["sleeps"] == [
        {
            "name": "nap",
            "occurrence": 0,
            "status": "sleeping",
            "wake_at": wake_at,
            "completed_at": None,
        }
    ]
    assert await claim(c) == []

    harness.advance(59_000)
    r = await c.get(f"/runs/{run_id}/wait", params={"status": "queued", "timeout_ms": 0})
    assert r.json()["status"] == "sleeping"

    harness.advance(1_001)
    with anyio.fail_after(5):
        r = await c.get(f"/runs/{run_id}/wait", params={"status": "queued", "timeout_ms": 60_000})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued"
    got = await get_run(c, run_id)
    assert got["sleeps"][0]["status"] == "completed"
    assert got["sleeps"][0]["completed_at"] is not None
    assert moves(got)[-2:] == [("running", "sleeping"), ("sleeping", "queued")]
    again = await claim_one(c)
    assert again["sleeps"][0]["status"] == "completed"


@pytest.mark.parametrize(
    "wake_at",
    ["3000-01-01T00:00:00.001Z", "9999-12-31T23:59:59.999Z", "0001-01-01T00:00:00.001Z"],
)
async def test_a_due_time_reads_back_to_the_millisecond(
    server: httpx.AsyncClient, wake_at: str
) -> None:
    # epoch ms / 1000 is a float: 3000-01-01T00:00:00.001 came back as .000999
    run_id, revision = await started_and_claimed(server)
    sleep = {"kind": "sleep", "name": "s", "occurrence": 2**53 - 1, "wake_at": wake_at}
    r = await transition(server, run_id, revision, {"kind": "suspend", "waits": [sleep]})
    assert r.status_code == 200, r.text
    [recorded] = (await get_run(server, run_id))["sleeps"]
    assert recorded["wake_at"] == wake_at.replace("Z", "000Z")
    assert recorded["occurrence"] == 2**53 - 1


RACES = 40
"""Parents suspending on a child at the very moment the child fails, in the race test."""


async def test_a_child_ending_while_its_parent_suspends_on_it_never_strands_the_parent(
    server: httpx.AsyncClient,
) -> None:
    # the parent's suspend and the child's end are concurrent transactions (on
    # PostgreSQL truly so): whichever commits first, the parent must end up queued
    pairs: list[tuple[str, int, str, int]] = []
    for _ in range(RACES):
        parent_id, parent_rev = await started_and_claimed(server, workflow="parent")
        r = await start_child(server, parent_id, parent_rev)
        assert r.status_code == 201, r.text
        child = await claim_one(server, "child")
        pairs.append((parent_id, parent_rev, child["run"]["id"], child["run"]["revision"]))

    async def suspend(parent_id: str, revision: int, child_id: str) -> None:
        waits = [{"kind": "child", "child_run_id": child_id}]
        r = await transition(server, parent_id, revision, {"kind": "suspend", "waits": waits})
        assert r.status_code == 200, r.text

    async def fail(child_id: str, revision: int) -> None:
        r = await transition(server, child_id, revision, {"kind": "fail", "error": error()})
        assert r.status_code == 200, r.text

    async with anyio.create_task_group() as tg:
        for parent_id, parent_rev, child_id, child_rev in pairs:
            tg.start_soon(suspend, parent_id, parent_rev, child_id)
            tg.start_soon(fail, child_id, child_rev)

    statuses = [(await get_run(server, parent_id))["status"] for parent_id, *_ in pairs]
    assert statuses == ["queued"] * RACES


@pytest.mark.parametrize("ending", ["fail", "cancel", "complete"])
async def test_a_parent_awaiting_a_child_is_requeued_when_it_ends(
    server: httpx.AsyncClient, ending: str
) -> None:
    parent_id, parent_rev = await started_and_claimed(server, workflow="parent")
    r = await start_child(server, parent_id, parent_rev)
    assert r.status_code == 201, r.text
    child_id = r.json()["run"]["id"]
    child = await claim_one(server, "child")
    assert child["run"]["id"] == child_id
    r = await transition(
        server,
        parent_id,
        parent_rev,
        {"kind": "suspend", "waits": [{"kind": "child", "child_run_id": child_id}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "awaiting_child"
    assert await claim(server, "parent") == []

    if ending == "cancel":
        # the running child cleans up first; a second cancel ends it at once
        r = await server.post(f"/runs/{child_id}/cancel")
        assert r.json()["status"] == "cleaning_up"
        assert (await get_run(server, parent_id))["status"] == "awaiting_child"
        r = await server.post(f"/runs/{child_id}/cancel")
    elif ending == "fail":
        r = await transition(
            server, child_id, child["run"]["revision"], {"kind": "fail", "error": error()}
        )
    else:
        r = await transition(
            server, child_id, child["run"]["revision"], {"kind": "complete", "result": 1}
        )
    assert r.status_code == 200, r.text

    got = await get_run(server, parent_id)
    assert got["status"] == "queued"
    assert moves(got)[-2:] == [("running", "awaiting_child"), ("awaiting_child", "queued")]
    expected = {"fail": "failed", "cancel": "cancelled", "complete": "completed"}[ending]
    assert [(ch["run_id"], ch["status"]) for ch in got["children"]] == [(child_id, expected)]
    again = await claim_one(server, "parent")
    assert [(ch["run_id"], ch["status"]) for ch in again["children"]] == [(child_id, expected)]


async def test_suspend_on_a_child_that_already_ended_requeues_at_once(
    server: httpx.AsyncClient,
) -> None:
    parent_id, parent_rev = await started_and_claimed(server, workflow="parent")
    r = await start_child(server, parent_id, parent_rev)
    child_id = r.json()["run"]["id"]
    assert (await server.post(f"/runs/{child_id}/cancel")).status_code == 200
    r = await transition(
        server,
        parent_id,
        parent_rev,
        {"kind": "suspend", "waits": [{"kind": "child", "child_run_id": child_id}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "queued"


async def test_start_child_is_idempotent_by_address_and_occurrence(
    server: httpx.AsyncClient,
) -> None:
    parent_id, revision = await started_and_claimed(server, workflow="parent")
    first = await start_child(server, parent_id, revision, input={"x": 1})
    assert first.status_code == 201, first.text
    assert first.json()["created"] is True
    child = first.json()["run"]
    assert child["parent_run_id"] == parent_id
    assert child["status"] == "queued"
    assert (child["workflow"], child["version"]) == ("child", "1")

    again = await start_child(server, parent_id, revision, input={"x": 1})
    assert again.status_code == 200, again.text
    assert again.json()["created"] is False
    assert again.json()["run"]["id"] == child["id"]

    other = await start_child(server, parent_id, revision, input={"x": 1}, occurrence=1)
    assert other.status_code == 201, other.text
    assert other.json()["run"]["id"] != child["id"]

    got = await get_run(server, parent_id)
    assert [(ch["run_id"], ch["address"], ch["occurrence"]) for ch in got["children"]] == [
        (child["id"], "child:77", 0),
        (other.json()["run"]["id"], "child:77", 1),
    ]
    assert (await get_run(server, child["id"]))["input"] == {"x": 1}
    r = await server.get("/runs", params={"workflow": "child"})
    assert len(r.json()["runs"]) == 2


async def test_a_child_inherits_the_parent_pool(server: httpx.AsyncClient) -> None:
    parent_id, revision = await started_and_claimed(server, workflow="parent", pool="gpu")
    r = await start_child(server, parent_id, revision)
    assert r.status_code == 201, r.text
    assert r.json()["run"]["pool"] == "gpu"
    r = await start_child(server, parent_id, revision, occurrence=1, pool="cpu")
    assert r.status_code == 201, r.text
    assert r.json()["run"]["pool"] == "cpu"
    assert await claim(server, "child") == []
    assert (await claim_one(server, "child", pool="gpu"))["run"]["pool"] == "gpu"
    assert (await claim_one(server, "child", pool="cpu"))["run"]["pool"] == "cpu"


async def test_release_puts_the_run_back_in_the_queue(server: httpx.AsyncClient) -> None:
    run_id, revision = await started_and_claimed(server)
    r = await transition(server, run_id, revision, {"kind": "release"})
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "queued"
    got = await get_run(server, run_id)
    assert got["status"] == "queued"
    assert got["finished_at"] is None
    assert moves(got)[-1] == ("running", "queued")
    again = await claim_one(server, worker_id="worker-2")
    assert again["run"]["id"] == run_id
    assert again["run"]["revision"] == revision + 1
    r = await transition(server, run_id, revision, {"kind": "complete"})
    error_of(r, 409, "stale_revision")


async def test_every_accepted_change_writes_one_history_row(server: httpx.AsyncClient) -> None:
    run_id = (await start(server))["id"]
    seen = 0

    async def one_more_row(entity: str, from_status: str | None, to_status: str) -> None:
        nonlocal seen
        history = (await get_run(server, run_id))["history"]
        assert len(history) == seen + 1, history
        last = history[-1]
        assert (last["entity"], last["from_status"], last["to_status"]) == (
            entity,
            from_status,
            to_status,
        )
        assert all(a["seq"] < b["seq"] for a, b in zip(history, history[1:], strict=False))
        seen += 1

    async def no_new_row() -> None:
        assert len((await get_run(server, run_id))["history"]) == seen

    await one_more_row("run", None, "queued")
    revision = (await claim_one(server))["run"]["revision"]
    await one_more_row("run", "queued", "running")
    r = await record(server, run_id, revision, status="running")
    assert r.status_code == 200, r.text
    await one_more_row("task", None, "running")
    r = await record(server, run_id, revision, status="completed", result=1)
    assert r.status_code == 200, r.text
    await one_more_row("task", "running", "completed")

    # rejected changes write nothing
    r = await record(server, run_id, revision, status="running", attempt=2)
    assert r.status_code == 409, r.text
    r = await transition(server, run_id, revision + 5, {"kind": "complete"})
    assert r.status_code == 409, r.text
    await no_new_row()

    # a child's history is its own
    r = await start_child(server, run_id, revision)
    assert r.status_code == 201, r.text
    await no_new_row()
    assert len((await get_run(server, r.json()["run"]["id"]))["history"]) == 1

    r = await transition(server, run_id, revision, {"kind": "release"})
    assert r.status_code == 200, r.text
    await one_more_row("run", "running", "queued")
    revision = (await claim_one(server))["run"]["revision"]
    await one_more_row("run", "queued", "running")
    r = await transition(server, run_id, revision, {"kind": "complete"})
    assert r.status_code == 200, r.text
    await one_more_row("run", "running", "completed")


# -- task records carried by a transition ------------------------------------------------


def task_json(revision: int, address: str, **fields: Any) -> dict[str, Any]:
    """A completed task record (task `charge`, first call, attempt 1 unless given)."""
    return {
        "revision": revision,
        "name": "charge",
        "address": address,
        "occurrence": 0,
        "attempt": 1,
        "status": "completed",
        **fields,
    }


async def transition_with_tasks(
    client: httpx.AsyncClient,
    run_id: str,
    revision: int,
    action: dict[str, Any],
    tasks: list[dict[str, Any]],
) -> httpx.Response:
    """Apply a worker action carrying task records."""
    return await client.post(
        f"/runs/{run_id}/transition", json={"revision": revision, "action": action, "tasks": tasks}
    )


async def test_a_transition_writes_its_task_records_before_its_action(
    server: httpx.AsyncClient,
) -> None:
    run_id, revision = await started_and_claimed(server)
    tasks = [
        task_json(revision, "charge:1", input=1, result="paid"),
        task_json(revision, "ship:2", name="ship", input=2, result=None),
    ]
    r = await transition_with_tasks(
        server, run_id, revision, {"kind": "complete", "result": 3}, tasks
    )
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "completed"
    got = await get_run(server, run_id)
    assert sorted((t["name"], t["status"], t["input"], t["result"]) for t in got["tasks"]) == [
        ("charge", "completed", 1, "paid"),
        ("ship", "completed", 2, None),
    ]
    assert got["result"] == 3
    changes = [(h["entity"], h["to_status"]) for h in got["history"]]
    assert changes[-3:] == [("task", "completed"), ("task", "completed"), ("run", "completed")]


async def test_a_refused_record_refuses_the_whole_transition(server: httpx.AsyncClient) -> None:
    run_id, revision = await started_and_claimed(server)
    r = await record(server, run_id, revision, status="completed", address="charge:1", result=1)
    assert r.status_code == 200, r.text
    before = await get_run(server, run_id)
    # the first record is fine, the second reopens a completed call: nothing may stay
    tasks = [
        task_json(revision, "charge:2", result=2),
        task_json(revision, "charge:1", status="running", attempt=2),
    ]
    r = await transition_with_tasks(server, run_id, revision, {"kind": "complete"}, tasks)
    details = error_of(r, 409, "illegal_transition")
    assert details["current"] == "completed"
    assert details["requested"] == "running"
    assert await get_run(server, run_id) == before


async def test_a_stale_transition_writes_none_of_its_task_records(
    server: httpx.AsyncClient,
) -> None:
    run_id, revision = await started_and_claimed(server)
    before = await get_run(server, run_id)
    stale = revision + 1
    tasks = [task_json(stale, "charge:1", result=1)]
    r = await transition_with_tasks(server, run_id, stale, {"kind": "complete"}, tasks)
    error_of(r, 409, "stale_revision")
    assert await get_run(server, run_id) == before


async def test_a_task_record_with_another_revision_is_stale(
    server: httpx.AsyncClient,
) -> None:
    # each record is fenced like the transition: no JSON Schema can tie the two revisions
    # together, so a mismatch is the 409 of a stale write, not a 422 of a bad shape
    run_id, revision = await started_and_claimed(server)
    before = await get_run(server, run_id)
    tasks = [task_json(revision, "charge:1", result=1), task_json(revision + 1, "ship:1")]
    r = await transition_with_tasks(server, run_id, revision, {"kind": "complete"}, tasks)
    details = error_of(r, 409, "stale_revision")
    assert details == {"run_id": run_id, "revision": revision + 1, "current_revision": revision}
    assert await get_run(server, run_id) == before


async def test_a_first_task_record_is_written_whole_in_few_round_trips(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the task, the run's counts, the first attempt and the history row go
    in one statement after the run's read; SQLite, in process, sends them one by one.
    Either way the run shows the same task, attempt and history."""
    h = harness
    run = await start(h.client)
    revision = (await claim_one(h.client))["run"]["revision"]
    sent = record_statements(monkeypatch)

    r = await h.client.post(f"/runs/{run['id']}/tasks", json=task_record(revision))
    assert r.status_code == 200, r.text

    dialect = h.app.state.db.dialect
    assert len(sent) == {"postgresql": 2, "sqlite": 5}[dialect], sent
    monkeypatch.undo()
    got = await get_run(h.client, run["id"])
    [task] = got["tasks"]
    assert (task["address"], task["status"], task["result"]) == ("charge:1", "completed", 7)
    assert [(a["attempt"], a["status"]) for a in task["attempts"]] == [(1, "completed")]
    history = [(e["entity"], e["to_status"]) for e in got["history"]]
    assert history[-1] == ("task", "completed")


async def test_a_run_moves_with_its_history_in_one_statement_on_postgresql(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim and a completion each write the run's row, drop its remote attempts (at its
    end) and add its history row: one statement on PostgreSQL, three on SQLite."""
    h = harness
    run = await start(h.client)
    sent = record_statements(monkeypatch)
    revision = (await claim_one(h.client))["run"]["revision"]
    r = await transition(h.client, run["id"], revision, {"kind": "complete", "result": 1})
    assert r.status_code == 200, r.text

    separate = [
        sql
        for sql, _ in sent
        if sql.startswith(("INSERT INTO state_transitions", "DELETE FROM task_pushes"))
    ]
    moves = [sql for sql, _ in sent if "UPDATE runs SET status" in sql]
    assert len(moves) == 2, moves
    if h.app.state.db.dialect == "postgresql":
        assert separate == []
        assert all(sql.startswith("WITH ") for sql in moves), moves
    else:
        assert len(separate) == 3, separate  # two history rows, one drop
    monkeypatch.undo()
    got = await get_run(h.client, run["id"])
    moved = [(e["from_status"], e["to_status"]) for e in got["history"] if e["entity"] == "run"]
    assert moved[-2:] == [("queued", "running"), ("running", "completed")]


async def test_a_task_record_keeps_its_worker_s_claim_as_a_heartbeat_does(
    make_harness: HarnessFactory,
) -> None:
    """A worker recording its tasks is alive, whatever its heartbeats met (a server back
    from an outage longer than the idle timeout): its claim is not taken meanwhile."""
    async with make_harness(claim_idle_timeout=timedelta(seconds=2)) as h:
        run = await start(h.client)
        revision = (await claim_one(h.client))["run"]["revision"]
        h.clock.advance(1_900)  # no heartbeat since the claim
        r = await h.client.post(f"/runs/{run['id']}/tasks", json=task_record(revision))
        assert r.status_code == 200, r.text
        h.clock.advance(1_900)  # 3.8 s after the claim, 1.9 s after the record

        await timer_pass(h)

        assert (await get_run(h.client, run["id"]))["status"] == "running"
        h.clock.advance(200)  # 2.1 s after the record: idle now
        await timer_pass(h)
        assert (await get_run(h.client, run["id"]))["status"] == "queued"
