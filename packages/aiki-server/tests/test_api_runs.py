"""Client-side HTTP API: start, read, list, wait, cancel, pause, resume, wake, events."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from aiki_core.wire import content_hash
from aiki_server._lifecycle import lock_run
from aiki_server._storage._sqlite import SqliteDatabase
from server_api import (
    FAR_FUTURE,
    START_MS,
    claim,
    claim_one,
    error_of,
    get_run,
    iso,
    start,
    task_record,
    timer_pass,
    transition,
    until_waiting,
)

if TYPE_CHECKING:
    import httpx

    from aiki_server._storage._database import Database, Tx
    from server_api import Harness, HarnessFactory

FAIL = {
    "kind": "fail",
    "error": {"type": "builtins.ValueError", "message": "boom", "retryable": False},
}


async def list_ids(client: httpx.AsyncClient, **params: Any) -> list[str]:
    """Ids of one page of `GET /runs`."""
    r = await client.get("/runs", params=params)
    assert r.status_code == 200, r.text
    return [run["id"] for run in r.json()["runs"]]


# -- start -----------------------------------------------------------------------------


async def test_start_returns_201_and_a_queued_run(server: httpx.AsyncClient) -> None:
    r = await server.post("/runs", json={"workflow": "orders", "version": "2.1", "input": {"n": 1}})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["created"] is True
    run = body["run"]
    assert run["status"] == "queued"
    assert run["workflow"] == "orders"
    assert run["version"] == "2.1"
    assert run["pool"] == "default"
    assert run["namespace"] == "default"
    assert run["revision"] == 0
    assert run["attempt"] == 1
    assert run["start_at"] is None
    assert run["finished_at"] is None
    assert (await get_run(server, run["id"]))["status"] == "queued"


async def test_same_reference_id_and_payload_returns_the_same_run(
    server: httpx.AsyncClient,
) -> None:
    body = {"workflow": "w", "version": "1", "input": {"a": [1, 2]}, "reference_id": "ref-1"}
    first = await server.post("/runs", json=body)
    assert first.status_code == 201, first.text
    again = await server.post("/runs", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["created"] is False
    assert again.json()["run"]["id"] == first.json()["run"]["id"]
    assert again.json()["run"]["reference_id"] == "ref-1"
    assert await list_ids(server) == [first.json()["run"]["id"]]


async def test_same_reference_id_with_other_input_is_a_conflict(
    server: httpx.AsyncClient,
) -> None:
    run = await start(server, input={"a": 1}, reference_id="ref-1")
    r = await server.post(
        "/runs", json={"workflow": "w", "version": "1", "input": {"a": 2}, "reference_id": "ref-1"}
    )
    details = error_of(r, 409, "reference_id_conflict")
    assert details == {"reference_id": "ref-1", "run_id": run["id"]}
    assert await list_ids(server) == [run["id"]]
    assert (await get_run(server, run["id"]))["input"] == {"a": 1}


async def test_a_client_minted_run_id_names_the_run(server: httpx.AsyncClient) -> None:
    run_id = "01JDQ7V8Y3N4X2K5M6P7R8S9T0"
    body = {"workflow": "w", "version": "1", "run_id": run_id}
    r = await server.post("/runs", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["run"]["id"] == run_id
    assert (await get_run(server, run_id))["status"] == "queued"
    # the same id again, without a reference id to make it the same start: a conflict
    again = await server.post("/runs", json={**body, "input": 2})
    assert error_of(again, 409, "conflict") == {"run_id": run_id}
    assert await list_ids(server) == [run_id]


@pytest.mark.parametrize(
    "run_id", ["short", "01jdq7v8y3n4x2k5m6p7r8s9t0", "01JDQ7V8Y3N4X2K5M6P7R8S9TU"]
)
async def test_a_run_id_that_is_not_a_ulid_is_refused(
    server: httpx.AsyncClient, run_id: str
) -> None:
    r = await server.post("/runs", json={"workflow": "w", "version": "1", "run_id": run_id})
    error_of(r, 422, "payload_validation")
    assert await list_ids(server) == []


async def test_a_reference_id_compares_input_fingerprints_when_given(
    server: httpx.AsyncClient,
) -> None:
    # sealed inputs differ on every start; their fingerprint does not
    body = {"workflow": "w", "version": "1", "reference_id": "ref-f", "input_hash": "a" * 64}
    first = await server.post("/runs", json={**body, "input": "ciphertext-1"})
    again = await server.post("/runs", json={**body, "input": "ciphertext-2"})
    assert again.status_code == 200, again.text
    assert again.json()["run"]["id"] == first.json()["run"]["id"]
    other = await server.post("/runs", json={**body, "input_hash": "b" * 64})
    error_of(other, 409, "reference_id_conflict")
    # without a fingerprint, the input's own hash stands in for it
    plain = {"workflow": "w", "version": "1", "reference_id": "ref-p", "input": {"a": 1}}
    one = await server.post("/runs", json=plain)
    hashed = {**plain, "input": "other", "input_hash": content_hash({"a": 1})}
    assert (await server.post("/runs", json=hashed)).json()["run"]["id"] == one.json()["run"]["id"]


async def test_delay_makes_a_scheduled_run(harness: Harness) -> None:
    run = await start(harness.client, delay=60_000)
    assert run["status"] == "scheduled"
    assert run["start_at"] == iso(START_MS + 60_000)
    # a scheduled run is not handed out
    assert await claim(harness.client) == []


async def test_start_at_in_the_future_makes_a_scheduled_run(harness: Harness) -> None:
    at = iso(START_MS + 3_600_000)
    run = await start(harness.client, start_at=at)
    assert run["status"] == "scheduled"
    assert run["start_at"] == at
    got = await get_run(harness.client, run["id"])
    assert got["status"] == "scheduled"
    assert [(h["from_status"], h["to_status"]) for h in got["history"]] == [(None, "scheduled")]


async def test_start_at_in_the_past_makes_a_queued_run(harness: Harness) -> None:
    run = await start(harness.client, start_at=iso(START_MS - 1000))
    assert run["status"] == "queued"
    assert run["start_at"] is None


# -- read --------------------------------------------------------------------------------


async def test_detail_has_input_tasks_and_history(server: httpx.AsyncClient) -> None:
    await start(server, workflow="other", input={})  # its transition comes first
    run = await start(server, input={"order": 7, "items": ["a", "b"]})
    claimed = await claim_one(server)
    revision = claimed["run"]["revision"]
    r = await server.post(
        f"/runs/{run['id']}/tasks",
        json={
            "revision": revision,
            "name": "charge",
            "address": "charge:abc",
            "occurrence": 0,
            "attempt": 1,
            "status": "completed",
            "input": {"amount": 5},
            "result": "ok",
        },
    )
    assert r.status_code == 200, r.text
    r = await transition(server, run["id"], revision, {"kind": "complete", "result": 42})
    assert r.status_code == 200, r.text

    got = await get_run(server, run["id"])
    assert got["id"] == run["id"]
    assert got["input"] == {"order": 7, "items": ["a", "b"]}
    assert got["result"] == 42
    assert got["status"] == "completed"
    assert [(t["name"], t["status"], t["input"], t["result"]) for t in got["tasks"]] == [
        ("charge", "completed", {"amount": 5}, "ok")
    ]
    for key in ("sleeps", "event_waits", "events", "children"):
        assert got[key] == []
    history = got["history"]
    run_rows = [(h["from_status"], h["to_status"]) for h in history if h["entity"] == "run"]
    assert run_rows == [(None, "queued"), ("queued", "running"), ("running", "completed")]
    task_rows = [(h["from_status"], h["to_status"]) for h in history if h["entity"] == "task"]
    assert task_rows == [(None, "completed")]
    # numbered within the run: the server-wide sequence would count others' transitions
    assert [h["seq"] for h in history] == [1, 2, 3, 4]
    assert all(h["run_id"] == run["id"] for h in history)
    assert [h["entity"] for h in history] == ["run", "run", "task", "run"]


# -- list --------------------------------------------------------------------------------


async def test_list_pages_newest_first_with_a_keyset_cursor(harness: Harness) -> None:
    created = []
    for i in range(7):
        created.append((await start(harness.client, input=i))["id"])
        harness.advance(1000)
    newest_first = created[::-1]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        r = await harness.client.get("/runs", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["runs"]) <= 3
        seen += [run["id"] for run in page["runs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert pages == 3
    assert seen == newest_first
    assert len(set(seen)) == 7


async def test_list_filters_by_workflow_version_status_reference_id_and_time(
    harness: Harness,
) -> None:
    c = harness.client
    a1 = (await start(c, workflow="a", version="1", reference_id="order-1"))["id"]
    harness.advance(1000)
    a2 = (await start(c, workflow="a", version="2"))["id"]
    harness.advance(1000)
    b1 = (await start(c, workflow="b", version="1", reference_id="order-1"))["id"]
    harness.advance(1000)
    b1_paused = (await start(c, workflow="b", version="1"))["id"]
    assert (await c.post(f"/runs/{b1_paused}/pause")).status_code == 200
    harness.advance(1000)
    a1_cancelled = (await start(c, workflow="a", version="1"))["id"]
    assert (await c.post(f"/runs/{a1_cancelled}/cancel")).status_code == 200

    assert await list_ids(c, workflow="a") == [a1_cancelled, a2, a1]
    assert await list_ids(c, workflow="b") == [b1_paused, b1]
    assert await list_ids(c, version="1") == [a1_cancelled, b1_paused, b1, a1]
    assert await list_ids(c, workflow="a", version="2") == [a2]
    assert await list_ids(c, workflow="nothing") == []
    # a reference id is unique per workflow, not across them
    assert await list_ids(c, reference_id="order-1") == [b1, a1]
    assert await list_ids(c, reference_id="order-1", workflow="a") == [a1]
    assert await list_ids(c, reference_id="order-2") == []

    r = await c.get("/runs", params=[("status", "paused"), ("status", "cancelled")])
    assert r.status_code == 200, r.text
    assert [run["id"] for run in r.json()["runs"]] == [a1_cancelled, b1_paused]
    assert await list_ids(c, status="queued") == [b1, a2, a1]

    between_1_and_2 = iso(START_MS + 1500)
    between_2_and_3 = iso(START_MS + 2500)
    assert await list_ids(c, created_after=between_1_and_2) == [a1_cancelled, b1_paused, b1]
    assert await list_ids(c, created_before=between_1_and_2) == [a2, a1]
    assert await list_ids(c, created_after=iso(START_MS + 500), created_before=between_2_and_3) == [
        b1,
        a2,
    ]
    assert await list_ids(c, created_after=between_1_and_2, workflow="a", status="cancelled") == [
        a1_cancelled
    ]


async def test_list_rejects_a_malformed_cursor(server: httpx.AsyncClient) -> None:
    # the OpenAPI document states the cursor's pattern: anything else is a 422 naming it
    await start(server)
    malformed = ("not-a-cursor", "%%%", "bm8tY29sb24", "1-a-b", "1234567890123456-X", "-X", "1-")
    for cursor in malformed:
        r = await server.get("/runs", params={"cursor": cursor})
        details = error_of(r, 422, "payload_validation")
        assert ["query", "cursor"] in [p["loc"] for p in details["errors"]], details


async def test_any_cursor_of_the_documented_pattern_is_a_page(server: httpx.AsyncClient) -> None:
    run = await start(server)
    for cursor in ("0-0", "999999999999999-zzzz", f"999999999999999-{run['id']}"):
        for path in ("/runs", "/schedules"):
            r = await server.get(path, params={"cursor": cursor})
            assert r.status_code == 200, r.text
    r = await server.get("/runs", params={"cursor": f"999999999999999-{run['id']}"})
    assert [found["id"] for found in r.json()["runs"]] == [run["id"]]


# -- wait --------------------------------------------------------------------------------


async def test_wait_returns_at_once_for_a_terminal_run(server: httpx.AsyncClient) -> None:
    run = await start(server)
    assert (await server.post(f"/runs/{run['id']}/cancel")).status_code == 200
    began = time.monotonic()
    r = await server.get(f"/runs/{run['id']}/wait", params={"timeout_ms": 30_000})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert r.json()["id"] == run["id"]
    assert time.monotonic() - began < 1.0


async def test_wait_times_out_with_the_current_status(server: httpx.AsyncClient) -> None:
    run = await start(server)
    began = time.monotonic()
    r = await server.get(f"/runs/{run['id']}/wait", params={"timeout_ms": 200})
    elapsed = time.monotonic() - began
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued"
    assert 0.19 <= elapsed < 2.0


async def test_wait_for_a_given_status_returns_when_it_is_reached(
    server: httpx.AsyncClient,
) -> None:
    run = await start(server)
    r = await server.get(
        f"/runs/{run['id']}/wait", params={"status": ["queued", "running"], "timeout_ms": 5000}
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued"


async def test_a_wait_is_woken_by_its_own_run_alone(harness: Harness) -> None:
    """Another run's moves wake no wait on this run, nor does time: its own move does."""
    h = harness
    hub = h.app.state.hub
    mine, other = await start(h.client), await start(h.client)
    answers: list[dict[str, Any]] = []

    async def wait() -> None:
        r = await h.client.get(f"/runs/{mine['id']}/wait", params={"timeout_ms": 60_000})
        assert r.status_code == 200, r.text
        answers.append(r.json())

    idle = hub.waiting  # the daemons' subscriptions
    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await until_waiting(h, idle + 1)
        assert (await h.client.post(f"/runs/{other['id']}/cancel")).status_code == 200
        assert hub.wakeups["run"] == 0
        assert not answers
        assert (await h.client.post(f"/runs/{mine['id']}/cancel")).status_code == 200
    assert [a["status"] for a in answers] == ["cancelled"]
    assert hub.wakeups["run"] == 1


async def test_wait_is_woken_when_the_run_completes(server: httpx.AsyncClient) -> None:
    run = await start(server)
    outcome: dict[str, Any] = {}

    async def waiter() -> None:
        r = await server.get(f"/runs/{run['id']}/wait", params={"timeout_ms": 20_000})
        outcome["response"] = r
        outcome["at"] = time.monotonic()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.1)
            assert outcome == {}, "the wait returned before the run ended"
            claimed = await claim_one(server)
            assert outcome == {}, "the wait returned on a non-terminal status"
            r = await transition(
                server, run["id"], claimed["run"]["revision"], {"kind": "complete", "result": 1}
            )
            assert r.status_code == 200, r.text
            completed_at = time.monotonic()
    response: httpx.Response = outcome["response"]
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    # woken by the change, not by the 20 s timeout nor the 1 s re-check
    assert outcome["at"] - completed_at < 0.9


# -- cancel ------------------------------------------------------------------------------


async def test_cancel_a_queued_run(server: httpx.AsyncClient) -> None:
    run = await start(server)
    r = await server.post(f"/runs/{run['id']}/cancel", json={"reason": "not needed"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    got = await get_run(server, run["id"])
    assert got["status"] == "cancelled"
    assert got["finished_at"] is not None
    assert got["error"]["code"] == "workflow_cancelled"
    assert "not needed" in got["error"]["message"]
    last = got["history"][-1]
    assert (last["from_status"], last["to_status"]) == ("queued", "cancelled")
    assert last["reason"] == "not needed"
    # nobody gets a cancelled run
    assert await claim(server) == []


async def until_waiting_for(tx: Tx, db: Database) -> None:
    """Return once another transaction waits for the locks `tx` holds."""
    if isinstance(db, SqliteDatabase):
        # SQLite: the one write lock is the database's; a transaction queues for it
        while db._lock.statistics().tasks_waiting == 0:  # noqa: ASYNC110 - nothing to await
            await anyio.sleep(0.01)
        return
    row = await tx.fetchrow("SELECT pg_current_xact_id()::text AS xid")
    assert row is not None
    while True:
        async with db.reader() as probe:
            waiting = await probe.fetchrow(
                "SELECT 1 FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted"
                " AND transactionid::text = $1",
                row["xid"],
            )
        if waiting is not None:
            return
        await anyio.sleep(0.01)


async def test_a_cancel_is_stamped_when_it_holds_the_run_not_when_it_asked(
    harness: Harness,
) -> None:
    h = harness
    run = await start(h.client)
    db = h.app.state.db
    answers: list[httpx.Response] = []

    async def cancel() -> None:
        answers.append(await h.client.post(f"/runs/{run['id']}/cancel"))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            async with db.transaction() as tx:  # the database is busy: the run is locked
                await lock_run(tx, run["id"], "default")
                tg.start_soon(cancel)
                await until_waiting_for(tx, db)
                h.clock.advance(60_000)  # the outage lasts a minute
    assert answers[0].status_code == 200, answers[0].text
    detail = await get_run(h.client, run["id"])
    assert detail["status"] == "cancelled"
    assert detail["finished_at"] == iso(START_MS + 60_000)
    assert detail["history"][-1]["at"] == iso(START_MS + 60_000)


async def test_cancel_without_a_body(server: httpx.AsyncClient) -> None:
    run = await start(server)
    r = await server.post(f"/runs/{run['id']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"


async def test_cancel_cascades_to_children_and_grandchildren(server: httpx.AsyncClient) -> None:
    parent = await start(server, workflow="parent")
    p = await claim_one(server, "parent")
    r = await server.post(
        f"/runs/{parent['id']}/children",
        json={
            "revision": p["run"]["revision"],
            "address": "child:1",
            "occurrence": 0,
            "workflow": "child",
            "version": "1",
        },
    )
    assert r.status_code == 201, r.text
    child_id = r.json()["run"]["id"]
    c = await claim_one(server, "child")
    assert c["run"]["id"] == child_id
    r = await server.post(
        f"/runs/{child_id}/children",
        json={
            "revision": c["run"]["revision"],
            "address": "grandchild:1",
            "occurrence": 0,
            "workflow": "grandchild",
            "version": "1",
        },
    )
    assert r.status_code == 201, r.text
    grandchild_id = r.json()["run"]["id"]

    r = await server.post(f"/runs/{parent['id']}/cancel")
    assert r.status_code == 200, r.text
    # the parent ran: it cleans up first, its descendants untouched until it ends
    assert (await get_run(server, parent["id"]))["status"] == "cleaning_up"
    assert (await get_run(server, child_id))["status"] == "running"
    assert (await get_run(server, grandchild_id))["status"] == "queued"
    cleanup = await claim_one(server, "parent")
    r = await transition(server, parent["id"], cleanup["run"]["revision"], {"kind": "complete"})
    assert r.status_code == 200, r.text
    # then they are cancelled (their policy: terminate), the grandchild with its parent
    for run_id, was, now in (
        (parent["id"], "cleaning_up", "cancelled"),
        (child_id, "running", "cancelled"),
        (grandchild_id, "queued", "cancelled"),
    ):
        got = await get_run(server, run_id)
        assert got["status"] == now, run_id
        assert (got["finished_at"] is not None) == (now == "cancelled")
        assert (got["history"][-1]["from_status"], got["history"][-1]["to_status"]) == (was, now)
    parent_detail = await get_run(server, parent["id"])
    assert [(ch["run_id"], ch["status"]) for ch in parent_detail["children"]] == [
        (child_id, "cancelled")
    ]
    # the workers that held them are fenced off
    r = await transition(server, child_id, c["run"]["revision"], {"kind": "complete"})
    error_of(r, 409, "stale_revision")
    assert await claim(server, "grandchild") == []


async def test_cancel_a_completed_run_is_an_illegal_transition(server: httpx.AsyncClient) -> None:
    run = await start(server)
    claimed = await claim_one(server)
    r = await transition(server, run["id"], claimed["run"]["revision"], {"kind": "complete"})
    assert r.status_code == 200, r.text
    before = await get_run(server, run["id"])
    r = await server.post(f"/runs/{run['id']}/cancel")
    details = error_of(r, 409, "illegal_transition")
    assert details["current"] == "completed"
    assert details["entity_id"] == run["id"]
    assert await get_run(server, run["id"]) == before


# -- pause, resume, wake -------------------------------------------------------------------


async def test_pause_and_resume_a_queued_run(server: httpx.AsyncClient) -> None:
    run = await start(server)
    r = await server.post(f"/runs/{run['id']}/pause")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "paused"
    assert await claim(server) == []
    r = await server.post(f"/runs/{run['id']}/resume")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued"
    got = await get_run(server, run["id"])
    assert [(h["from_status"], h["to_status"]) for h in got["history"]] == [
        (None, "queued"),
        ("queued", "paused"),
        ("paused", "queued"),
    ]
    assert (await claim_one(server))["run"]["id"] == run["id"]


async def test_pause_and_resume_a_scheduled_run_keeps_its_start_time(harness: Harness) -> None:
    c = harness.client
    run = await start(c, delay=60_000)
    r = await c.post(f"/runs/{run['id']}/pause")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "paused"
    r = await c.post(f"/runs/{run['id']}/resume")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "scheduled"
    assert r.json()["start_at"] == iso(START_MS + 60_000)
    assert await claim(c) == []


@pytest.mark.parametrize("status", ["queued", "sleeping", "completed"])
async def test_resume_a_run_that_is_not_paused_leaves_it_alone(
    server: httpx.AsyncClient, status: str
) -> None:
    run = await start(server)
    if status != "queued":
        claimed = await claim_one(server)
        if status == "sleeping":
            sleep = {"kind": "sleep", "name": "nap", "occurrence": 0, "wake_at": FAR_FUTURE}
            action: dict[str, Any] = {"kind": "suspend", "waits": [sleep]}
        else:
            action = {"kind": "complete"}
        r = await transition(server, run["id"], claimed["run"]["revision"], action)
        assert r.json()["run"]["status"] == status
    before = await get_run(server, run["id"])
    r = await server.post(f"/runs/{run['id']}/resume")
    details = error_of(r, 409, "illegal_transition")
    assert details["current"] == status
    assert await get_run(server, run["id"]) == before


async def test_resume_a_run_that_is_not_paused_is_an_illegal_transition(
    server: httpx.AsyncClient,
) -> None:
    run = await start(server)
    await claim_one(server)
    r = await server.post(f"/runs/{run['id']}/resume")
    # running -> queued is legal for the state machine, but resume is for paused runs only
    details = error_of(r, 409, "illegal_transition")
    assert details["current"] == "running"
    assert (await get_run(server, run["id"]))["status"] == "running"


async def heartbeat(client: httpx.AsyncClient, run: dict[str, Any]) -> str:
    """The heartbeat's directive for the claimed `run` (of worker `worker-1`)."""
    lease = {"run_id": run["id"], "revision": run["revision"]}
    r = await client.post("/heartbeats", json={"worker_id": "worker-1", "runs": [lease]})
    assert r.status_code == 200, r.text
    directive: str = r.json()["runs"][0]["directive"]
    return directive


def run_moves(detail: dict[str, Any]) -> list[tuple[str, str]]:
    return [(h["from_status"], h["to_status"]) for h in detail["history"] if h["entity"] == "run"]


async def pause_while_running(client: httpx.AsyncClient) -> dict[str, Any]:
    """A claimed run (its summary) whose pause was just requested."""
    await start(client)
    run: dict[str, Any] = (await claim_one(client))["run"]
    r = await client.post(f"/runs/{run['id']}/pause")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running"
    assert r.json()["pause_requested"] is True
    return run


async def test_pause_a_running_run_waits_for_its_next_task_boundary(
    server: httpx.AsyncClient,
) -> None:
    run = await pause_while_running(server)
    revision = run["revision"]
    # the claim stays valid: the task in flight is recorded, and the worker is told
    assert await heartbeat(server, run) == "pause"
    r = await server.post(f"/runs/{run['id']}/tasks", json=task_record(revision))
    assert r.status_code == 200, r.text
    assert r.json()["directive"] == "pause"
    # the worker stops before its next task and lets the run go: it is paused
    r = await transition(server, run["id"], revision, {"kind": "release"})
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "paused"
    assert r.json()["run"]["pause_requested"] is False
    detail = await get_run(server, run["id"])
    assert [(t["name"], t["status"]) for t in detail["tasks"]] == [("charge", "completed")]
    assert run_moves(detail)[-2:] == [("running", "running"), ("running", "paused")]
    assert "pause requested" in detail["history"][-3]["reason"]
    assert await claim(server) == []
    # resumed, the next claim carries the recorded task: it does not run again
    assert (await server.post(f"/runs/{run['id']}/resume")).json()["status"] == "queued"
    again = await claim_one(server)
    assert [t["status"] for t in again["tasks"]] == ["completed"]


async def test_resume_before_the_task_boundary_withdraws_the_pause(
    server: httpx.AsyncClient,
) -> None:
    run = await pause_while_running(server)
    r = await server.post(f"/runs/{run['id']}/resume")
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["pause_requested"]) == ("running", False)
    assert await heartbeat(server, run) == "continue"
    r = await server.post(f"/runs/{run['id']}/tasks", json=task_record(run["revision"]))
    assert r.json()["directive"] == "continue"
    r = await transition(server, run["id"], run["revision"], {"kind": "complete", "result": 1})
    assert r.json()["run"]["status"] == "completed"
    reasons = [h["reason"] for h in (await get_run(server, run["id"]))["history"]]
    assert "pause withdrawn" in reasons


async def test_a_pausing_run_that_suspends_is_paused_its_wait_kept_for_its_replay(
    server: httpx.AsyncClient,
) -> None:
    run = await pause_while_running(server)
    sleep = {"kind": "sleep", "name": "nap", "occurrence": 0, "wake_at": FAR_FUTURE}
    r = await transition(server, run["id"], run["revision"], {"kind": "suspend", "waits": [sleep]})
    assert r.json()["run"]["status"] == "paused"
    # a paused run waits for nothing; the sleep keeps its due time for the replay
    paused = await get_run(server, run["id"])
    assert [(s["name"], s["status"]) for s in paused["sleeps"]] == [("nap", "withdrawn")]

    await server.post(f"/runs/{run['id']}/resume")
    again = (await claim_one(server))["run"]
    later = {**sleep, "wake_at": "2200-01-01T00:00:00Z"}  # a replay's own idea is ignored
    suspend = {"kind": "suspend", "waits": [later]}
    r = await transition(server, run["id"], again["revision"], suspend)

    assert r.json()["run"]["status"] == "sleeping"
    (nap,) = (await get_run(server, run["id"]))["sleeps"]
    assert (nap["status"], nap["wake_at"]) == ("sleeping", "2100-01-01T00:00:00Z")


@pytest.mark.parametrize(
    ("action", "status"),
    [({"kind": "complete", "result": 1}, "completed"), (FAIL, "failed")],
)
async def test_a_pausing_run_that_ends_just_ends(
    server: httpx.AsyncClient, action: dict[str, Any], status: str
) -> None:
    run = await pause_while_running(server)
    r = await transition(server, run["id"], run["revision"], action)
    assert r.json()["run"]["status"] == status
    assert r.json()["run"]["pause_requested"] is False


async def test_cancel_a_pausing_run_fences_its_worker_at_once(server: httpx.AsyncClient) -> None:
    run = await pause_while_running(server)
    assert (await server.post(f"/runs/{run['id']}/cancel")).json()["status"] == "cleaning_up"
    assert await heartbeat(server, run) == "cancel"
    r = await server.post(f"/runs/{run['id']}/tasks", json=task_record(run["revision"]))
    error_of(r, 409, "stale_revision")


async def test_an_idle_claim_of_a_pausing_run_is_paused(make_harness: HarnessFactory) -> None:
    async with make_harness(claim_idle_timeout=timedelta(seconds=5)) as h:
        run = await pause_while_running(h.client)
        h.clock.advance(6_000)
        await timer_pass(h)
        detail = await get_run(h.client, run["id"])
        assert detail["status"] == "paused"
        assert "went idle" in detail["history"][-1]["reason"]
        # the worker that let its claim go idle is fenced off
        r = await transition(h.client, run["id"], run["revision"], {"kind": "release"})
        error_of(r, 409, "stale_revision")


async def test_wake_a_sleeping_run(server: httpx.AsyncClient) -> None:
    run = await start(server)
    claimed = await claim_one(server)
    r = await transition(
        server,
        run["id"],
        claimed["run"]["revision"],
        {
            "kind": "suspend",
            "waits": [{"kind": "sleep", "name": "nap", "occurrence": 0, "wake_at": FAR_FUTURE}],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "sleeping"
    r = await server.post(f"/runs/{run['id']}/wake")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued"
    got = await get_run(server, run["id"])
    assert got["status"] == "queued"
    assert [(s["name"], s["status"]) for s in got["sleeps"]] == [("nap", "woken")]
    assert got["sleeps"][0]["completed_at"] is not None
    assert (got["history"][-1]["from_status"], got["history"][-1]["to_status"]) == (
        "sleeping",
        "queued",
    )
    again = await claim_one(server)
    assert again["sleeps"][0]["status"] == "woken"


async def test_wake_a_run_that_is_not_sleeping_is_a_conflict(server: httpx.AsyncClient) -> None:
    run = await start(server)
    before = await get_run(server, run["id"])
    r = await server.post(f"/runs/{run['id']}/wake")
    details = error_of(r, 409, "illegal_transition")
    assert details["current"] == "queued"
    assert await get_run(server, run["id"]) == before


# -- events ------------------------------------------------------------------------------


async def test_send_event_to_an_unknown_run_is_404(server: httpx.AsyncClient) -> None:
    r = await server.post("/runs/01NOSUCHRUN/events", json={"name": "go"})
    details = error_of(r, 404, "not_found")
    assert details == {"resource": "run", "resource_id": "01NOSUCHRUN"}


async def test_event_with_a_repeated_reference_id_is_a_duplicate(
    server: httpx.AsyncClient,
) -> None:
    run = await start(server)
    event = {"name": "go", "data": {"x": 1}, "reference_id": "evt-1"}
    first = await server.post(f"/runs/{run['id']}/events", json=event)
    assert first.status_code == 200, first.text
    assert first.json()["duplicate"] is False
    again = await server.post(f"/runs/{run['id']}/events", json=event)
    assert again.status_code == 200, again.text
    assert again.json() == {"event_id": first.json()["event_id"], "duplicate": True}
    got = await get_run(server, run["id"])
    assert [(e["id"], e["name"], e["data"]) for e in got["events"]] == [
        (first.json()["event_id"], "go", {"x": 1})
    ]


async def test_an_event_sent_before_the_wait_is_consumed_by_it(server: httpx.AsyncClient) -> None:
    run = await start(server)
    claimed = await claim_one(server)
    r = await server.post(f"/runs/{run['id']}/events", json={"name": "go", "data": "early"})
    assert r.status_code == 200, r.text
    event_id = r.json()["event_id"]
    got = await get_run(server, run["id"])
    assert [(e["id"], e["consumed"]) for e in got["events"]] == [(event_id, False)]

    r = await transition(
        server,
        run["id"],
        claimed["run"]["revision"],
        {"kind": "suspend", "waits": [{"kind": "event", "name": "go", "occurrence": 0}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "queued"

    again = await claim_one(server)
    assert again["run"]["id"] == run["id"]
    assert again["event_waits"] == [
        {
            "name": "go",
            "occurrence": 0,
            "status": "received",
            "timeout_at": None,
            "event_id": event_id,
        }
    ]
    assert [(e["id"], e["data"], e["consumed"]) for e in again["events"]] == [
        (event_id, "early", True)
    ]


async def test_an_event_sent_while_the_run_waits_requeues_it(server: httpx.AsyncClient) -> None:
    run = await start(server)
    claimed = await claim_one(server)
    r = await transition(
        server,
        run["id"],
        claimed["run"]["revision"],
        {"kind": "suspend", "waits": [{"kind": "event", "name": "go", "occurrence": 0}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "awaiting_event"
    assert await claim(server) == []

    r = await server.post(f"/runs/{run['id']}/events", json={"name": "go", "data": 5})
    assert r.status_code == 200, r.text
    event_id = r.json()["event_id"]
    got = await get_run(server, run["id"])
    assert got["status"] == "queued"
    assert [(w["status"], w["event_id"]) for w in got["event_waits"]] == [("received", event_id)]
    assert (got["history"][-1]["from_status"], got["history"][-1]["to_status"]) == (
        "awaiting_event",
        "queued",
    )
    again = await claim_one(server)
    assert again["event_waits"][0]["event_id"] == event_id


async def test_an_event_of_another_name_does_not_requeue(server: httpx.AsyncClient) -> None:
    run = await start(server)
    claimed = await claim_one(server)
    r = await transition(
        server,
        run["id"],
        claimed["run"]["revision"],
        {"kind": "suspend", "waits": [{"kind": "event", "name": "go", "occurrence": 0}]},
    )
    assert r.status_code == 200, r.text
    r = await server.post(f"/runs/{run['id']}/events", json={"name": "other"})
    assert r.status_code == 200, r.text
    got = await get_run(server, run["id"])
    assert got["status"] == "awaiting_event"
    assert got["event_waits"][0]["status"] == "waiting"


async def test_send_event_to_a_completed_run_is_a_conflict(server: httpx.AsyncClient) -> None:
    run = await start(server)
    claimed = await claim_one(server)
    r = await transition(server, run["id"], claimed["run"]["revision"], {"kind": "complete"})
    assert r.status_code == 200, r.text
    r = await server.post(f"/runs/{run['id']}/events", json={"name": "go"})
    details = error_of(r, 409, "conflict")
    assert details["status"] == "completed"
    assert (await get_run(server, run["id"]))["events"] == []


# -- runs no worker serves ------------------------------------------------------------------


async def test_a_run_no_worker_serves_says_why_it_waits(server: httpx.AsyncClient) -> None:
    first = await start(server, workflow="billing", version="7")
    second = await start(server, workflow="billing", version="7")
    got = await get_run(server, first["id"])
    assert got["status"] == "queued"
    reason = got["pending_reason"]
    assert reason is not None
    assert "billing" in reason
    assert "7" in reason

    # a worker of another version gets nothing, and the runs still say why
    assert await claim(server, "billing", "8", worker_id="old") == []
    for run in (first, second):
        got = await get_run(server, run["id"])
        assert got["status"] == "queued"
        assert got["pending_reason"] is not None

    claimed = await claim_one(server, "billing", "7", worker_id="new")
    still_queued = second if claimed["run"]["id"] == first["id"] else first
    got = await get_run(server, still_queued["id"])
    assert got["status"] == "queued"
    assert got["pending_reason"] is None
    # a running run has no pending reason either
    assert (await get_run(server, claimed["run"]["id"]))["pending_reason"] is None


async def unserved_ids(server: httpx.AsyncClient) -> set[str]:
    r = await server.get("/runs", params={"unserved": "true"})
    assert r.status_code == 200, r.text
    return {run["id"] for run in r.json()["runs"]}


async def test_unserved_runs_are_those_no_live_worker_or_endpoint_serves(
    server: httpx.AsyncClient,
) -> None:
    billing = await start(server, workflow="billing", version="7")
    audit = await start(server, workflow="audit", version="1")
    assert await unserved_ids(server) == {billing["id"], audit["id"]}

    # a worker of another version serves neither; an endpoint of billing 7 serves it
    assert await claim(server, "billing", "8", worker_id="old") == []
    r = await server.post(
        "/endpoints",
        json={
            "url": "https://billing.example.com/aiki",
            "workflows": [{"workflow": "billing", "version": "7", "pool": "default"}],
        },
    )
    assert r.status_code == 201, r.text
    assert await unserved_ids(server) == {audit["id"]}

    # a live worker of audit 1 claims its run: running runs are never unserved
    await claim_one(server, "audit", "1", worker_id="auditor")
    assert await unserved_ids(server) == set()


# -- workers -------------------------------------------------------------------------------


async def test_workers_list_their_triples_held_runs_and_liveness(
    server: httpx.AsyncClient,
) -> None:
    assert (await server.get("/workers")).json() == {"workers": []}
    await start(server, workflow="billing", version="7")
    await claim_one(server, "billing", "7", worker_id="new")
    both = [
        {"workflow": "billing", "version": "6", "pool": "eu"},
        {"workflow": "w", "version": "1", "pool": "default"},
    ]
    assert await claim(server, worker_id="old", capabilities=both) == []

    r = await server.get("/workers")
    assert r.status_code == 200, r.text
    workers = {w["id"]: w for w in r.json()["workers"]}
    assert workers["new"]["capabilities"] == [
        {"workflow": "billing", "version": "7", "pool": "default"}
    ]
    assert workers["old"]["capabilities"] == both
    assert (workers["new"]["running"], workers["old"]["running"]) == (1, 0)
    assert workers["new"]["live"] and workers["old"]["live"]


async def test_a_worker_unseen_for_the_claim_idle_timeout_is_no_longer_live(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness(claim_idle_timeout=timedelta(seconds=5)) as h:
        assert await claim(h.client, worker_id="w-1") == []
        h.advance(5_001)
        (worker,) = (await h.client.get("/workers")).json()["workers"]
        assert (worker["id"], worker["live"]) == ("w-1", False)
        assert await claim(h.client, worker_id="w-1") == []  # it polls again
        (worker,) = (await h.client.get("/workers")).json()["workers"]
        assert worker["live"] is True
