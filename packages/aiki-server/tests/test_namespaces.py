"""Namespace isolation, route by route: a key of namespace B cannot see or touch A's objects.

`CASES` holds one case per route of the API, and a test checks that it covers every
`/api/v1` route the app documents: a new route fails here until it has its case. In each
case a key of namespace A sets up its objects, a key of B acts on them, and the case
checks B's answer (a 404 as for an id that does not exist, an empty list, no claim)
and that A's objects are exactly as they were; where it shows the request was
sound, A then does the same successfully. Every case runs on both databases.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest

from aiki_server import create_app
from server_api import (
    FAR_FUTURE,
    START_MS,
    claim,
    claim_one,
    client_with,
    create_schedule,
    error_of,
    get_run,
    get_schedule,
    iso,
    new_key,
    start,
    task_record,
    transition,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx

    from server_api import Harness


@dataclass
class Tenants:
    """Two namespaces on one server: a client with a key of each."""

    a: httpx.AsyncClient
    b: httpx.AsyncClient
    harness: Harness


@pytest.fixture
async def tenants(harness: Harness) -> AsyncIterator[Tenants]:
    key_a = await new_key(harness.app, "team-a")
    key_b = await new_key(harness.app, "team-b")
    async with (
        client_with(harness.app, key_a.key) as a,
        client_with(harness.app, key_b.key) as b,
    ):
        yield Tenants(a, b, harness)


Case = Callable[[Tenants], Awaitable[None]]
CASES: dict[tuple[str, str], Case] = {}


def case(method: str, path: str) -> Callable[[Case], Case]:
    """Register the isolation case of the route `method path`."""

    def register(check: Case) -> Case:
        CASES[(method, f"/api/v1{path}")] = check
        return check

    return register


def not_found(r: httpx.Response, resource: str = "run") -> None:
    """`r` is the 404 of an id that names nothing."""
    details = error_of(r, 404, "not_found")
    assert details["resource"] == resource, details


async def held_run(client: httpx.AsyncClient) -> tuple[dict[str, Any], int]:
    """A run started and claimed (as `worker-1`) by `client`; its summary and revision."""
    run = await start(client)
    claimed = await claim_one(client)
    assert claimed["run"]["id"] == run["id"]
    revision: int = claimed["run"]["revision"]
    return run, revision


async def sleeping_run(client: httpx.AsyncClient) -> dict[str, Any]:
    """A run suspended on a sleep that never ends by itself."""
    run, revision = await held_run(client)
    sleep = {"kind": "sleep", "name": "nap", "occurrence": 0, "wake_at": FAR_FUTURE}
    r = await transition(client, run["id"], revision, {"kind": "suspend", "waits": [sleep]})
    assert r.status_code == 200, r.text
    return run


async def mint(client: httpx.AsyncClient, run_id: str, revision: int) -> httpx.Response:
    body = {"revision": revision, "event": "paid", "expires_in": 3_600_000, "schema": {}}
    return await client.post(f"/runs/{run_id}/webhooks", json=body)


# -- runs ----------------------------------------------------------------------------------


@case("POST", "/runs")
async def start_under_a_reference_id_of_a(t: Tenants) -> None:
    mine = await start(t.a, reference_id="order-1", input={"n": 1})
    before = await get_run(t.a, mine["id"])

    # B's reference ids are its own: the same one starts B's run, not a 409 or A's run
    theirs = await start(t.b, reference_id="order-1", input={"n": 2})
    # ids are global: A's id is taken, and the start says no more than that
    taken = await t.b.post("/runs", json={"workflow": "w", "version": "1", "run_id": mine["id"]})

    assert theirs["id"] != mine["id"]
    assert theirs["namespace"] == "team-b"
    error_of(taken, 409, "conflict")
    assert await get_run(t.a, mine["id"]) == before


@case("GET", "/limits")
async def read_the_limits(t: Tenants) -> None:
    mine = await start(t.a)

    # the server's settings, the same for every namespace; nothing of A's shows
    r = await t.b.get("/limits")

    assert r.status_code == 200
    assert r.json() == (await t.a.get("/limits")).json()
    assert mine["id"] not in r.text


@case("GET", "/runs")
async def list_runs(t: Tenants) -> None:
    mine = await start(t.a)

    r = await t.b.get("/runs", params={"workflow": "w"})

    assert r.status_code == 200
    assert r.json() == {"runs": [], "next_cursor": None}
    assert [run["id"] for run in (await t.a.get("/runs")).json()["runs"]] == [mine["id"]]


@case("POST", "/migrations")
async def migrate_runs(t: Tenants) -> None:
    mine = await start(t.a)
    theirs = await start(t.b)
    for client in (t.a, t.b):  # each knows version 2
        await claim(client, version="2", worker_id="worker-2")
    body = {"workflow": "w", "from_version": "1", "to_version": "2"}

    r = await t.b.post("/migrations", json=body)

    assert r.status_code == 200, r.text
    assert [run["id"] for run in r.json()["migrated"]] == [theirs["id"]]
    assert (await get_run(t.a, mine["id"]))["version"] == "1"
    # a run of A named by B is not one of B's runs (B still knows version 1)
    await start(t.b, input=1)
    r = await t.b.post("/migrations", json={**body, "filter": {"run_ids": [mine["id"]]}})
    error_of(r, 409, "conflict")
    assert (await get_run(t.a, mine["id"]))["version"] == "1"


@case("POST", "/dry-runs/{job_id}/report")
async def report_a_dry_run(t: Tenants) -> None:
    mine = await start(t.a)
    await claim(t.a, version="2", worker_id="worker-2")  # only A has a worker of version 2
    body = {"workflow": "w", "from_version": "1", "to_version": "2", "dry_run": True}
    await start(t.b)
    await start(t.b, version="2")  # B knows both versions; no worker of B serves version 2
    theirs = await t.b.post("/migrations", json=body)  # A's worker replays nothing of B's
    error_of(theirs, 409, "no_dry_run_worker")
    answers: list[httpx.Response] = []

    async def dry_run() -> None:
        answers.append(await t.a.post("/migrations", json={**body, "wait": 10_000}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(dry_run)
        room = {"worker_id": "worker-2", "runs": [], "max_dry_runs": 10}
        poll = await t.a.post("/directives", json=room)
        [job] = poll.json()["dry_runs"]
        # B's worker of the same id is not handed A's job, nor can B answer it
        seen = await t.b.post("/directives", json={**room, "wait": 0})
        assert seen.json()["dry_runs"] == []
        call = {"name": "charge", "address": "charge:1", "occurrence": 0}
        report = {
            "run_id": mine["id"],
            "version": "2",
            "outcome": "runs_a_task",
            "would_run": call,
            "stopped_at": "task 'charge' has no record: it would run",
        }
        answer = {"worker_id": "worker-2", "report": report}
        not_found(await t.b.post(f"/dry-runs/{job['job_id']}/report", json=answer), "dry-run job")
        ours = await t.a.post(f"/dry-runs/{job['job_id']}/report", json=answer)
        assert ours.status_code == 200, ours.text

    [answered] = answers
    assert answered.status_code == 200, answered.text
    assert [r["run_id"] for r in answered.json()["dry_runs"]] == [mine["id"]]


@case("GET", "/runs/{run_id}")
async def read_a_run(t: Tenants) -> None:
    mine = await start(t.a)

    not_found(await t.b.get(f"/runs/{mine['id']}"))


@case("GET", "/runs/{run_id}/wait")
async def wait_for_a_run(t: Tenants) -> None:
    mine = await start(t.a)

    not_found(await t.b.get(f"/runs/{mine['id']}/wait", params={"timeout_ms": 0}))
    assert (await t.a.get(f"/runs/{mine['id']}/wait", params={"timeout_ms": 0})).status_code == 200


async def control_a_run(t: Tenants, run_id: str, action: str, expected: str) -> None:
    """B's `action` on A's run is a 404 and changes nothing; A's own moves it to `expected`."""
    before = await get_run(t.a, run_id)

    not_found(await t.b.post(f"/runs/{run_id}/{action}"))

    assert await get_run(t.a, run_id) == before
    r = await t.a.post(f"/runs/{run_id}/{action}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == expected


@case("POST", "/runs/{run_id}/cancel")
async def cancel_a_run(t: Tenants) -> None:
    await control_a_run(t, (await start(t.a))["id"], "cancel", "cancelled")


@case("POST", "/runs/{run_id}/pause")
async def pause_a_run(t: Tenants) -> None:
    await control_a_run(t, (await start(t.a))["id"], "pause", "paused")


@case("POST", "/runs/{run_id}/resume")
async def resume_a_run(t: Tenants) -> None:
    mine = await start(t.a)
    assert (await t.a.post(f"/runs/{mine['id']}/pause")).status_code == 200

    await control_a_run(t, mine["id"], "resume", "queued")


@case("POST", "/runs/{run_id}/wake")
async def wake_a_run(t: Tenants) -> None:
    await control_a_run(t, (await sleeping_run(t.a))["id"], "wake", "queued")


@case("POST", "/runs/{run_id}/events")
async def send_an_event_to_a_run(t: Tenants) -> None:
    mine = await start(t.a)
    event = {"name": "paid", "data": {"txn": 1}, "reference_id": "t-1"}

    not_found(await t.b.post(f"/runs/{mine['id']}/events", json=event))

    assert (await get_run(t.a, mine["id"]))["events"] == []
    sent = await t.a.post(f"/runs/{mine['id']}/events", json=event)
    assert sent.json()["duplicate"] is False  # B's reference id left no trace


# -- workers -------------------------------------------------------------------------------


@case("POST", "/claims")
async def claim_a_run(t: Tenants) -> None:
    mine = await start(t.a)
    before = await get_run(t.a, mine["id"])

    assert await claim(t.b) == []  # the same triple, the same worker id

    assert await get_run(t.a, mine["id"]) == before
    assert (await claim_one(t.a))["run"]["id"] == mine["id"]


@case("GET", "/workers")
async def list_the_workers(t: Tenants) -> None:
    await held_run(t.a)  # worker-1 of A holds a run

    assert (await t.b.get("/workers")).json() == {"workers": []}
    await claim(t.b, worker_id="worker-1")  # B's worker-1 is its own
    (theirs,) = (await t.b.get("/workers")).json()["workers"]
    (mine,) = (await t.a.get("/workers")).json()["workers"]

    assert (theirs["id"], theirs["running"]) == ("worker-1", 0)
    assert (mine["id"], mine["running"]) == ("worker-1", 1)


@case("POST", "/heartbeats")
async def heartbeat_a_claim(t: Tenants) -> None:
    mine, revision = await held_run(t.a)
    db = t.harness.app.state.db

    async def claim_expiry() -> int:
        async with db.reader() as tx:
            row = await tx.fetchrow("SELECT claim_expires_at FROM runs WHERE id = $1", mine["id"])
        assert row is not None
        expiry: int = row["claim_expires_at"]
        return expiry

    expires = await claim_expiry()
    t.harness.clock.advance(10_000)  # a refreshed claim would expire later
    lease = {"worker_id": "worker-1", "runs": [{"run_id": mine["id"], "revision": revision}]}

    r = await t.b.post("/heartbeats", json=lease)

    assert r.status_code == 200, r.text
    assert r.json()["runs"] == [{"run_id": mine["id"], "directive": "lost"}]
    assert await claim_expiry() == expires
    ours = await t.a.post("/heartbeats", json=lease)
    assert ours.json()["runs"] == [{"run_id": mine["id"], "directive": "continue"}]
    assert await claim_expiry() == expires + 10_000


@case("POST", "/directives")
async def poll_directives(t: Tenants) -> None:
    mine, revision = await held_run(t.a)
    lease = {"run_id": mine["id"], "revision": revision}
    poll = {"worker_id": "worker-1", "runs": [lease], "wait": 0}

    r = await t.b.post("/directives", json=poll)

    assert r.status_code == 200, r.text
    assert r.json()["runs"] == [{"run_id": mine["id"], "directive": "lost"}]
    ours = await t.a.post("/directives", json=poll)
    assert ours.json()["runs"] == []  # nothing changed for its own worker


@case("POST", "/runs/{run_id}/abandoned-tasks")
async def note_an_abandoned_task(t: Tenants) -> None:
    mine, revision = await held_run(t.a)
    before = (await get_run(t.a, mine["id"]))["history"]
    note = {"revision": revision, "task_name": "t", "attempt": 1, "grace": 1000}

    r = await t.b.post(f"/runs/{mine['id']}/abandoned-tasks", json=note)

    not_found(r)
    assert (await get_run(t.a, mine["id"]))["history"] == before


@case("POST", "/runs/{run_id}/tasks")
async def record_a_task(t: Tenants) -> None:
    mine, revision = await held_run(t.a)
    record = task_record(revision)

    not_found(await t.b.post(f"/runs/{mine['id']}/tasks", json=record))  # the hot path's

    assert (await get_run(t.a, mine["id"]))["tasks"] == []
    assert (await t.a.post(f"/runs/{mine['id']}/tasks", json=record)).status_code == 200


@case("POST", "/runs/{run_id}/children")
async def start_a_child(t: Tenants) -> None:
    mine, revision = await held_run(t.a)
    child = {
        "revision": revision,
        "address": "child:1",
        "occurrence": 0,
        "workflow": "child",
        "version": "1",
    }

    not_found(await t.b.post(f"/runs/{mine['id']}/children", json=child))

    assert (await get_run(t.a, mine["id"]))["children"] == []
    assert (await t.b.get("/runs", params={"workflow": "child"})).json()["runs"] == []
    assert (await t.a.post(f"/runs/{mine['id']}/children", json=child)).status_code == 201


@case("POST", "/runs/{run_id}/transition")
async def transition_a_run(t: Tenants) -> None:
    mine, revision = await held_run(t.a)
    before = await get_run(t.a, mine["id"])
    complete = {"kind": "complete", "result": "done"}

    not_found(await transition(t.b, mine["id"], revision, complete))  # the hot path's

    assert await get_run(t.a, mine["id"]) == before
    r = await transition(t.a, mine["id"], revision, complete)
    assert r.json()["run"]["status"] == "completed"


@case("POST", "/runs/{run_id}/webhooks")
async def mint_a_webhook(t: Tenants) -> None:
    mine, revision = await held_run(t.a)

    not_found(await mint(t.b, mine["id"], revision))

    async with t.harness.app.state.db.reader() as tx:
        assert await tx.fetch("SELECT id FROM webhooks") == []
    assert (await mint(t.a, mine["id"], revision)).status_code == 201


@case("POST", "/runs/{run_id}/remote-tasks")
async def call_a_remote_task(t: Tenants) -> None:
    mine, revision = await held_run(t.a)
    # B's task endpoint serves the task, and is not A's to push to
    endpoint = {"url": "http://127.0.0.1:9/aiki/", "tasks": ["resize"]}
    assert (await t.b.post("/endpoints", json=endpoint)).status_code == 201
    call = {
        "revision": revision,
        "name": "resize",
        "address": "resize:1",
        "occurrence": 0,
        "attempt": 1,
        "input": {"url": "cat.png"},
    }

    not_found(await t.b.post(f"/runs/{mine['id']}/remote-tasks", json=call))

    answered = await t.a.post(f"/runs/{mine['id']}/remote-tasks", json=call)
    assert answered.status_code == 200, answered.text
    failed = answered.json()
    assert (failed["status"], failed["error"]["code"]) == ("failed", "server_unavailable")
    assert "no task endpoint of namespace 'team-a' serves it" in failed["error"]["message"]


@case("POST", "/webhooks/{webhook_id}")
async def deliver_through_a_webhook(t: Tenants) -> None:
    # no key here: the signed URL is the credential, and it names one run of one namespace
    mine, revision = await held_run(t.a)
    ours = (await mint(t.a, mine["id"], revision)).json()
    theirs_run, theirs_revision = await held_run(t.b)
    theirs = (await mint(t.b, theirs_run["id"], theirs_revision)).json()
    query = parse_qs(urlsplit(theirs["path"]).query)
    before = await get_run(t.a, mine["id"])

    # B's valid signature under A's webhook id: refused, as any changed URL is
    forged = await t.b.post(
        f"/webhooks/{ours['webhook_id']}",
        params={"expires": query["expires"][0], "signature": query["signature"][0]},
        json={"txn": "t-9"},
    )

    error_of(forged, 403, "permission_denied")
    assert await get_run(t.a, mine["id"]) == before
    delivered = await t.b.post(theirs["path"].removeprefix("/api/v1"), json={"txn": "t-9"})
    assert delivered.status_code == 200, delivered.text
    assert await get_run(t.a, mine["id"]) == before
    assert [e["name"] for e in (await get_run(t.b, theirs_run["id"]))["events"]] == ["paid"]


# -- schedules -----------------------------------------------------------------------------


@case("POST", "/schedules")
async def create_a_schedule_under_a_name_of_a(t: Tenants) -> None:
    mine = await create_schedule(t.a)

    # names are per namespace: B's `nightly` is its own, though its definition differs
    theirs = await create_schedule(t.b, every=120_000)

    assert theirs["id"] != mine["id"]
    assert theirs["namespace"] == "team-b"
    assert await get_schedule(t.a, mine["id"]) == mine


@case("GET", "/schedules")
async def list_schedules(t: Tenants) -> None:
    mine = await create_schedule(t.a)

    r = await t.b.get("/schedules")

    assert r.status_code == 200
    assert r.json() == {"schedules": [], "next_cursor": None}
    assert [s["id"] for s in (await t.a.get("/schedules")).json()["schedules"]] == [mine["id"]]


@case("GET", "/schedules/{schedule_id}")
async def read_a_schedule(t: Tenants) -> None:
    mine = await create_schedule(t.a)

    not_found(await t.b.get(f"/schedules/{mine['id']}"), "schedule")


async def control_a_schedule(t: Tenants, schedule_id: str, method: str, action: str) -> None:
    """B's `action` on A's schedule is a 404 and changes nothing; A's own succeeds."""
    before = await get_schedule(t.a, schedule_id)
    path = f"/schedules/{schedule_id}{action}"

    not_found(await t.b.request(method, path), "schedule")

    assert await get_schedule(t.a, schedule_id) == before
    assert (await t.a.request(method, path)).status_code == 200


@case("POST", "/schedules/{schedule_id}/pause")
async def pause_a_schedule(t: Tenants) -> None:
    await control_a_schedule(t, (await create_schedule(t.a))["id"], "POST", "/pause")


@case("POST", "/schedules/{schedule_id}/resume")
async def resume_a_schedule(t: Tenants) -> None:
    mine = await create_schedule(t.a)
    assert (await t.a.post(f"/schedules/{mine['id']}/pause")).status_code == 200

    await control_a_schedule(t, mine["id"], "POST", "/resume")


@case("DELETE", "/schedules/{schedule_id}")
async def delete_a_schedule(t: Tenants) -> None:
    await control_a_schedule(t, (await create_schedule(t.a))["id"], "DELETE", "")


@case("PATCH", "/schedules/{schedule_id}")
async def update_a_schedule(t: Tenants) -> None:
    mine = await create_schedule(t.a)
    path = f"/schedules/{mine['id']}"

    not_found(await t.b.patch(path, json={"every": 60_000, "paused": True}), "schedule")

    assert await get_schedule(t.a, mine["id"]) == mine
    r = await t.a.patch(path, json={"every": 60_000})
    assert r.status_code == 200, r.text
    assert r.json()["every"] == 60_000


@case("POST", "/schedules/{schedule_id}/backfill")
async def backfill_a_schedule(t: Tenants) -> None:
    mine = await create_schedule(t.a)
    span = {"start": iso(START_MS - 30_000), "end": iso(START_MS)}
    path = f"/schedules/{mine['id']}/backfill"

    not_found(await t.b.post(path, json=span), "schedule")

    assert (await t.a.get("/runs")).json()["runs"] == []  # nothing started
    r = await t.a.post(path, json=span)
    assert r.status_code == 200, r.text
    assert r.json()["started"] == 3


# -- rate limits ---------------------------------------------------------------------------


async def define_a_limit(client: httpx.AsyncClient, limit: int = 1) -> dict[str, Any]:
    r = await client.put("/rate-limits/api", json={"limit": limit, "per": 60_000})
    assert r.status_code == 200, r.text
    defined: dict[str, Any] = r.json()
    return defined


async def rate_limit_of(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/rate-limits/api")
    assert r.status_code == 200, r.text
    got: dict[str, Any] = r.json()
    return got


@case("PUT", "/rate-limits/{name}")
async def set_a_limit_under_a_name_of_a(t: Tenants) -> None:
    mine = await define_a_limit(t.a)

    # names are per namespace: B's `api` is its own
    theirs = await define_a_limit(t.b, limit=5)

    assert (theirs["namespace"], theirs["limit"]) == ("team-b", 5)
    assert await rate_limit_of(t.a) == mine


@case("GET", "/rate-limits")
async def list_rate_limits(t: Tenants) -> None:
    mine = await define_a_limit(t.a)

    r = await t.b.get("/rate-limits")

    assert r.status_code == 200
    assert r.json() == {"rate_limits": []}
    assert (await t.a.get("/rate-limits")).json() == {"rate_limits": [mine]}


@case("GET", "/rate-limits/{name}")
async def read_a_rate_limit(t: Tenants) -> None:
    await define_a_limit(t.a)

    error_of(await t.b.get("/rate-limits/api"), 404, "rate_limit_not_found")


@case("DELETE", "/rate-limits/{name}")
async def delete_a_limit(t: Tenants) -> None:
    mine = await define_a_limit(t.a)

    error_of(await t.b.delete("/rate-limits/api"), 404, "rate_limit_not_found")

    assert await rate_limit_of(t.a) == mine
    assert (await t.a.delete("/rate-limits/api")).status_code == 200


@case("POST", "/rate-limits/{name}/acquire")
async def acquire_units_of_a(t: Tenants) -> None:
    await define_a_limit(t.a)

    error_of(await t.b.post("/rate-limits/api/acquire", json={}), 404, "rate_limit_not_found")

    # A's one unit is still there, and B's own limit of the same name has its own
    assert (await t.a.post("/rate-limits/api/acquire", json={})).json()["granted"] is True
    await define_a_limit(t.b)
    assert (await t.b.post("/rate-limits/api/acquire", json={})).json()["granted"] is True


# -- concurrency limits --------------------------------------------------------------------


async def concurrency_limit_of(client: httpx.AsyncClient, workflow: str = "w") -> dict[str, Any]:
    """The workflow's concurrency limit, which must exist."""
    r = await client.get(f"/concurrency-limits/{workflow}")
    assert r.status_code == 200, r.text
    limit: dict[str, Any] = r.json()
    return limit


async def set_concurrency_limit(client: httpx.AsyncClient, limit: int, workflow: str = "w") -> None:
    r = await client.put(f"/concurrency-limits/{workflow}", json={"limit": limit})
    assert r.status_code == 200, r.text


@case("PUT", "/concurrency-limits/{workflow}")
async def set_a_limit_of_the_same_workflow(t: Tenants) -> None:
    await set_concurrency_limit(t.a, 1)
    before = await concurrency_limit_of(t.a)

    # B's workflow `w` is its own: its limit is B's, and A's limit holds none of B's runs
    await set_concurrency_limit(t.b, 5)
    for _ in range(2):
        await start(t.b)
        await start(t.a)

    assert await concurrency_limit_of(t.a) == before
    assert len(await claim(t.b, max_runs=10)) == 2
    assert len(await claim(t.a, max_runs=10)) == 1


@case("GET", "/concurrency-limits")
async def list_concurrency_limits(t: Tenants) -> None:
    await set_concurrency_limit(t.a, 1)

    r = await t.b.get("/concurrency-limits")

    assert r.status_code == 200
    assert r.json() == {"limits": []}
    mine = (await t.a.get("/concurrency-limits")).json()["limits"]
    assert [item["workflow"] for item in mine] == ["w"]


@case("GET", "/concurrency-limits/{workflow}")
async def read_a_concurrency_limit(t: Tenants) -> None:
    await set_concurrency_limit(t.a, 1)

    not_found(await t.b.get("/concurrency-limits/w"), "concurrency limit")


@case("DELETE", "/concurrency-limits/{workflow}")
async def clear_a_limit(t: Tenants) -> None:
    await set_concurrency_limit(t.a, 1)
    before = await concurrency_limit_of(t.a)

    not_found(await t.b.delete("/concurrency-limits/w"), "concurrency limit")

    assert await concurrency_limit_of(t.a) == before
    assert (await t.a.delete("/concurrency-limits/w")).status_code == 200


# -- retention -----------------------------------------------------------------------------


async def retention_of(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/retention")
    assert r.status_code == 200, r.text
    info: dict[str, Any] = r.json()
    return info


@case("PUT", "/retention")
async def set_a_retention(t: Tenants) -> None:
    r = await t.a.put("/retention", json={"retention": 1000})
    assert r.status_code == 200, r.text
    before = await retention_of(t.a)

    r = await t.b.put("/retention", json={"retention": None})

    assert r.status_code == 200, r.text
    assert await retention_of(t.a) == before
    assert (await retention_of(t.b))["namespace"] == "team-b"


@case("GET", "/retention")
async def read_a_retention(t: Tenants) -> None:
    r = await t.a.put("/retention", json={"retention": 1000})
    assert r.status_code == 200, r.text

    theirs = await retention_of(t.b)

    assert (theirs["namespace"], theirs["source"]) == ("team-b", "server")


@case("DELETE", "/retention")
async def clear_a_retention(t: Tenants) -> None:
    r = await t.a.put("/retention", json={"retention": 1000})
    assert r.status_code == 200, r.text
    before = await retention_of(t.a)

    r = await t.b.delete("/retention")

    assert r.status_code == 200, r.text
    assert await retention_of(t.a) == before


# -- push endpoints ------------------------------------------------------------------------


async def create_endpoint(client: httpx.AsyncClient) -> dict[str, Any]:
    """A task endpoint of the client's namespace, as created (without its secret)."""
    r = await client.post("/endpoints", json={"url": "https://tasks.example/aiki", "tasks": ["t"]})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()["endpoint"]
    return created


async def endpoint_of(client: httpx.AsyncClient, endpoint_id: str) -> dict[str, Any]:
    r = await client.get(f"/endpoints/{endpoint_id}")
    assert r.status_code == 200, r.text
    got: dict[str, Any] = r.json()
    return got


@case("POST", "/endpoints")
async def create_an_endpoint_beside_a(t: Tenants) -> None:
    mine = await create_endpoint(t.a)

    theirs = await create_endpoint(t.b)

    assert theirs["namespace"] == "team-b"
    assert theirs["id"] != mine["id"]
    assert await endpoint_of(t.a, mine["id"]) == mine


@case("GET", "/endpoints")
async def list_endpoints(t: Tenants) -> None:
    mine = await create_endpoint(t.a)

    r = await t.b.get("/endpoints")

    assert r.status_code == 200
    assert r.json() == {"endpoints": []}
    assert (await t.a.get("/endpoints")).json() == {"endpoints": [mine]}


@case("GET", "/endpoints/{endpoint_id}")
async def read_an_endpoint(t: Tenants) -> None:
    mine = await create_endpoint(t.a)

    not_found(await t.b.get(f"/endpoints/{mine['id']}"), "endpoint")


@case("DELETE", "/endpoints/{endpoint_id}")
async def delete_an_endpoint(t: Tenants) -> None:
    mine = await create_endpoint(t.a)

    not_found(await t.b.delete(f"/endpoints/{mine['id']}"), "endpoint")

    assert await endpoint_of(t.a, mine["id"]) == mine
    assert (await t.a.delete(f"/endpoints/{mine['id']}")).status_code == 200


@case("POST", "/endpoints/{endpoint_id}/secrets")
async def rotate_an_endpoints_secret(t: Tenants) -> None:
    mine = await create_endpoint(t.a)

    not_found(await t.b.post(f"/endpoints/{mine['id']}/secrets", json={}), "endpoint")

    assert await endpoint_of(t.a, mine["id"]) == mine
    assert (await t.a.post(f"/endpoints/{mine['id']}/secrets", json={})).status_code == 201


# -- the tests -----------------------------------------------------------------------------


def test_every_api_route_has_an_isolation_case() -> None:
    # the OpenAPI document lists every route (FastAPI keeps included routers' routes
    # behind private wrappers in `app.routes`)
    spec = create_app("sqlite:///never-opened.db").openapi()  # nothing is opened
    routes = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        if path.startswith("/api/v1/")
        for method in operations
    }

    assert set(CASES) == routes


@pytest.mark.parametrize("route", sorted(CASES), ids=lambda r: f"{r[0]} {r[1]}")
async def test_a_key_of_another_namespace_cannot_see_or_touch_it(
    tenants: Tenants, route: tuple[str, str]
) -> None:
    await CASES[route](tenants)
