"""Flow control through the API: concurrency limits, strategies, priorities and fairness.

Every test runs on SQLite and on PostgreSQL (the `db_url` fixture is parametrized).
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from aiki_server._claims import Claims
from aiki_server._flow import Group
from aiki_server._notify import slots_topic
from server_api import (
    FAR_FUTURE,
    START_MS,
    claim,
    error_of,
    get_run,
    iso,
    start,
    transition,
    until_waiting,
    wait_status,
)

if TYPE_CHECKING:
    import httpx

    from server_api import Harness, HarnessFactory

W = "w"
SLEEP = {"kind": "sleep", "name": "nap", "occurrence": 0, "wake_at": FAR_FUTURE}


def limited(key: str | None, limit: int = 2, strategy: str = "queue") -> dict[str, Any]:
    """A start's `concurrency` field."""
    return {"key": key, "limit": limit, "strategy": strategy}


async def start_keyed(
    client: httpx.AsyncClient, key: str | None, *, priority: int = 0, **fields: Any
) -> dict[str, Any]:
    return await start(client, concurrency=limited(key, **fields), priority=priority)


async def complete(client: httpx.AsyncClient, claimed: dict[str, Any]) -> None:
    run = claimed["run"]
    r = await transition(client, run["id"], run["revision"], {"kind": "complete"})
    assert r.status_code == 200, r.text


async def run_count(h: Harness) -> int:
    async with h.app.state.db.reader() as tx:
        row = await tx.fetchrow("SELECT COUNT(*) AS n FROM runs")
    assert row is not None
    return int(row["n"])


def keys_of(claimed: list[dict[str, Any]]) -> Counter[str | None]:
    return Counter(c["run"]["concurrency_key"] for c in claimed)


# -- limits at claim time ----------------------------------------------------------------------


async def test_a_key_at_its_limit_is_passed_over_and_says_why(server: httpx.AsyncClient) -> None:
    acme = [await start_keyed(server, "acme") for _ in range(4)]
    beta = await start_keyed(server, "beta")
    assert acme[0]["concurrency_key"] == "acme"
    assert acme[0]["priority"] == 0

    claimed = await claim(server, max_runs=10)
    assert keys_of(claimed) == {"acme": 2, "beta": 1}
    assert {c["run"]["id"] for c in claimed} == {acme[0]["id"], acme[1]["id"], beta["id"]}
    waiting = await get_run(server, acme[2]["id"])
    assert waiting["status"] == "queued"
    assert waiting["pending_reason"] == "waiting for concurrency key acme: 2 of 2 running"

    # a second worker gets nothing while both slots are taken
    assert await claim(server, max_runs=10, worker_id="worker-2") == []
    await complete(server, claimed[0])
    again = await claim(server, max_runs=10, worker_id="worker-2")
    assert [c["run"]["id"] for c in again] == [acme[2]["id"]]


async def test_a_suspended_run_frees_its_slot(server: httpx.AsyncClient) -> None:
    first, second = [await start_keyed(server, "acme", limit=1) for _ in range(2)]
    (held,) = await claim(server, max_runs=5)
    assert held["run"]["id"] == first["id"]
    assert await claim(server, max_runs=5) == []
    r = await transition(
        server, first["id"], held["run"]["revision"], {"kind": "suspend", "waits": [SLEEP]}
    )
    assert r.status_code == 200, r.text
    (next_one,) = await claim(server, max_runs=5)
    assert next_one["run"]["id"] == second["id"]


async def test_a_limit_without_key_counts_the_whole_workflow(server: httpx.AsyncClient) -> None:
    for _ in range(3):
        await start_keyed(server, None, limit=1)
    await start(server, workflow="other")  # another workflow is not limited
    claimed = await claim(
        server,
        max_runs=10,
        capabilities=[{"workflow": w, "version": "1", "pool": "default"} for w in (W, "other")],
    )
    assert Counter(c["run"]["workflow"] for c in claimed) == {W: 1, "other": 1}


async def test_many_claimers_at_once_never_exceed_a_limit(server: httpx.AsyncClient) -> None:
    keys = [f"k{i}" for i in range(5)]
    for i in range(60):
        await start_keyed(server, keys[i % 5])
    taken: list[dict[str, Any]] = []

    async def claimer(worker: str) -> None:
        taken.extend(await claim(server, max_runs=3, worker_id=worker))

    async with anyio.create_task_group() as tg:
        for n in range(16):
            tg.start_soon(claimer, f"worker-{n}")
    assert all(n <= 2 for n in keys_of(taken).values()), keys_of(taken)
    # a claimer that found every candidate locked by the others got nothing: fill up
    taken += await claim(server, max_runs=20, worker_id="late")
    assert keys_of(taken) == dict.fromkeys(keys, 2)


async def test_a_limit_changed_at_run_time_applies_at_the_next_claim(
    server: httpx.AsyncClient,
) -> None:
    for _ in range(4):
        await start_keyed(server, "acme", limit=1)
    assert len(await claim(server, max_runs=10)) == 1
    r = await server.put(f"/concurrency-limits/{W}", json={"limit": 3})
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "operator"
    assert r.json()["limit"] == 3
    assert len(await claim(server, max_runs=10)) == 2
    # the operator's limit wins over what later starts declare
    await start_keyed(server, "acme", limit=1)
    got = (await server.get(f"/concurrency-limits/{W}")).json()
    assert (got["limit"], got["source"], got["per_key"]) == (3, "operator", True)
    listed = (await server.get("/concurrency-limits")).json()["limits"]
    assert [item["workflow"] for item in listed] == [W]

    # cleared, the workflow has no limit until a start declares one again
    cleared = await server.delete(f"/concurrency-limits/{W}")
    assert cleared.json()["limit"] == 3
    error_of(await server.get(f"/concurrency-limits/{W}"), 404, "not_found")
    await start_keyed(server, "acme", limit=5)
    got = (await server.get(f"/concurrency-limits/{W}")).json()
    assert (got["limit"], got["source"]) == (5, "code")
    error_of(await server.delete("/concurrency-limits/nothing-here"), 404, "not_found")


async def test_an_operator_limit_holds_runs_that_declare_none(server: httpx.AsyncClient) -> None:
    r = await server.put(f"/concurrency-limits/{W}", json={"limit": 1, "per_key": False})
    assert r.status_code == 200, r.text
    first = await start(server)
    await start(server)
    claimed = await claim(server, max_runs=10)
    assert [c["run"]["id"] for c in claimed] == [first["id"]]


# -- strategies --------------------------------------------------------------------------------


async def test_cancel_newest_starts_the_run_cancelled(server: httpx.AsyncClient) -> None:
    first = await start_keyed(server, "acme", limit=1, strategy="cancel_newest")
    second = await start_keyed(server, "acme", limit=1, strategy="cancel_newest")
    other = await start_keyed(server, "beta", limit=1, strategy="cancel_newest")
    assert (first["status"], second["status"], other["status"]) == (
        "queued",
        "cancelled",
        "queued",
    )
    detail = await get_run(server, second["id"])
    reasons = [h["reason"] for h in detail["history"]]
    assert any("cancel_newest" in (reason or "") for reason in reasons), reasons
    assert detail["error"]["code"] == "workflow_cancelled"


async def test_cancel_in_progress_cancels_the_oldest_to_make_room(
    server: httpx.AsyncClient,
) -> None:
    first = await start_keyed(server, "acme", limit=1, strategy="cancel_in_progress")
    (held,) = await claim(server)
    second = await start_keyed(server, "acme", limit=1, strategy="cancel_in_progress")
    assert second["status"] == "queued"
    # cancelled as a client's cancel is: its worker is fenced off, and it cleans up
    assert (await get_run(server, first["id"]))["status"] == "cleaning_up"
    r = await transition(server, first["id"], held["run"]["revision"], {"kind": "complete"})
    assert r.status_code == 409, r.text
    # the cleanup keeps the slot: a claim takes it, and not the new run beside it
    (cleanup,) = await claim(server, max_runs=2)
    assert cleanup["run"]["id"] == first["id"]
    r = await transition(server, first["id"], cleanup["run"]["revision"], {"kind": "complete"})
    assert r.status_code == 200, r.text
    assert (await get_run(server, first["id"]))["status"] == "cancelled"
    (taken,) = await claim(server)
    assert taken["run"]["id"] == second["id"]


# -- priorities and fairness -------------------------------------------------------------------


async def test_one_slot_takes_runs_by_priority_then_in_order(harness: Harness) -> None:
    client = harness.client
    low = await start(client)
    mid = await start(client, priority=5)
    high = await start(client, priority=9)
    mid_later = await start(client, priority=5)
    order = []
    for _ in range(4):
        (claimed,) = await claim(client)
        order.append(claimed["run"]["id"])
        await complete(client, claimed)
    assert order == [high["id"], mid["id"], mid_later["id"], low["id"]]


async def test_an_old_low_priority_run_overtakes_a_stream_of_high_ones(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness(priority_step=timedelta(milliseconds=100)) as h:
        low = await start(h.client)
        taken = []
        for _ in range(30):  # a new high-priority run every 50 ms, one slot
            await start(h.client, priority=9)
            h.clock.advance(50)
            (claimed,) = await claim(h.client)
            taken.append(claimed["run"]["id"])
            await complete(h.client, claimed)
            if claimed["run"]["id"] == low["id"]:
                break
        # it waited 9 steps (900 ms), and not much more
        assert low["id"] in taken
        assert 15 <= len(taken) <= 21, len(taken)


@pytest.mark.parametrize("priority", [0, 9])
async def test_a_small_key_is_served_beside_a_large_backlog(
    harness: Harness, priority: int
) -> None:
    client = harness.client
    big = [await start_keyed(client, "A", limit=1000, priority=priority) for _ in range(500)]
    small = {
        (await start_keyed(client, "B", limit=1000, priority=priority))["id"] for _ in range(5)
    }
    finished: list[str] = []
    while small - set(finished):
        (claimed,) = await claim(client)
        finished.append(claimed["run"]["id"])
        await complete(client, claimed)
    assert big[-1]["id"] not in finished
    assert len(finished) <= 12, len(finished)


# -- visible everywhere, bad input ---------------------------------------------------------------


async def test_runs_can_be_listed_by_concurrency_key(server: httpx.AsyncClient) -> None:
    acme = {(await start_keyed(server, "acme"))["id"] for _ in range(2)}
    await start_keyed(server, "beta")
    await start(server)
    r = await server.get("/runs", params={"concurrency_key": "acme"})
    assert r.status_code == 200, r.text
    assert {run["id"] for run in r.json()["runs"]} == acme


async def test_bad_flow_control_input_is_refused_and_writes_nothing(harness: Harness) -> None:
    client = harness.client
    bad: list[dict[str, Any]] = [
        {"priority": 10},
        {"priority": -1},
        {"concurrency": limited("acme", limit=0)},
        {"concurrency": limited("k" * 201)},
        {"concurrency": limited("")},
        {"concurrency": limited("acme", strategy="drop_all")},
    ]
    for fields in bad:
        r = await client.post("/runs", json={"workflow": W, "version": "1", **fields})
        error_of(r, 422, "payload_validation")
    r = await client.put(f"/concurrency-limits/{W}", json={"limit": 0})
    error_of(r, 422, "payload_validation")
    assert await run_count(harness) == 0
    error_of(await client.get(f"/concurrency-limits/{W}"), 404, "not_found")


# -- adversarial review: the queue's front full of runs whose group is full ------------------------

BOTH = [{"workflow": w, "version": "1", "pool": "default"} for w in (W, "other")]


async def test_a_full_workflow_limit_does_not_block_other_workflows(
    server: httpx.AsyncClient,
) -> None:
    # a workflow limited to one run at a time with a backlog (no key: nothing spreads it)
    for _ in range(30):
        await start_keyed(server, None, limit=1)
    other = await start(server, workflow="other")  # no limit, queued after the backlog
    (first,) = await claim(server, capabilities=BOTH)
    assert first["run"]["workflow"] == W
    # w's one slot is taken: the worker's next claim must reach the other workflow's run
    claimed = await claim(server, capabilities=BOTH, worker_id="worker-2")
    assert [c["run"]["id"] for c in claimed] == [other["id"]]


async def test_a_woken_backlog_of_a_full_key_does_not_block_other_keys(
    harness: Harness,
) -> None:
    client = harness.client
    for _ in range(30):
        await start_keyed(client, "acme", limit=1)
    # each acme run takes the slot in turn and sleeps until the same moment
    sleep = {"kind": "suspend", "waits": [{**SLEEP, "wake_at": iso(START_MS + 1_000)}]}
    ids = []
    for _ in range(30):
        (c,) = await claim(client)
        r = await transition(client, c["run"]["id"], c["run"]["revision"], sleep)
        assert r.status_code == 200, r.text
        ids.append(c["run"]["id"])
    harness.advance(2_000)
    for run_id in ids:
        await wait_status(client, run_id, "queued")
    beta = await start_keyed(client, "beta", limit=1)
    (first,) = await claim(client)
    assert first["run"]["concurrency_key"] == "acme"
    claimed = await claim(client, worker_id="worker-2")
    assert [c["run"]["id"] for c in claimed] == [beta["id"]]


@pytest.mark.only_on(
    "sqlite",
    "the starts' notifications arrive late there, and wake the subscription",
)
@pytest.mark.parametrize("how", ["complete", "raise_limit"])
async def test_a_freed_slot_of_a_workflow_wide_limit_wakes_waiting_workers(
    harness: Harness, how: str
) -> None:
    """A slot freed (a run stops, or an operator raises the limit) wakes long-polls.

    Runs under a limit without key carry no concurrency key: they must wake them too.
    """
    client = harness.client
    for _ in range(2):
        await start_keyed(client, None, limit=1)
    (held,) = await claim(client)
    assert await claim(client, worker_id="worker-2") == []
    # what a waiting worker's long-poll for the workflow awaits
    woken = harness.app.state.hub.subscribe(slots_topic("default", W))
    if how == "complete":
        await complete(client, held)
    else:
        r = await client.put(f"/concurrency-limits/{W}", json={"limit": 2, "per_key": False})
        assert r.status_code == 200, r.text
    assert await woken.wait(10)
    assert len(await claim(client, worker_id="worker-2")) == 1


async def test_claimers_racing_past_unlimited_runs_never_exceed_a_limit(
    server: httpx.AsyncClient,
) -> None:
    """A claim that looked only at unlimited runs, but takes others (those it saw were taken
    by a claim meanwhile), must still gate them by their limit."""
    for _ in range(20):
        await start(server, workflow="other")  # no limit
        await start_keyed(server, None, limit=1)
    taken: list[dict[str, Any]] = []

    async def claimer(worker: str) -> None:
        for _ in range(3):
            taken.extend(await claim(server, capabilities=BOTH, worker_id=worker))

    async with anyio.create_task_group() as tg:
        for n in range(16):
            tg.start_soon(claimer, f"worker-{n}")
    assert Counter(c["run"]["workflow"] for c in taken)[W] <= 1, Counter(
        c["run"]["workflow"] for c in taken
    )


async def test_a_freed_slot_wakes_the_polls_of_a_limit_this_replica_has_not_read(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A limit another replica wrote (this one's view of the limited workflows is older)
    still has the slot its run frees wake the long-polls its group held up."""
    h = harness
    monkeypatch.setattr("aiki_server._flow_settings._LIMITS_READ_EVERY", 3600.0)
    hub = h.app.state.hub
    w = f"w-{uuid.uuid4().hex}"
    await start(h.client, workflow=w)
    (held,) = await claim(h.client, w, worker_id="b")
    await start(h.client, workflow=f"{w}-x")
    (other,) = await claim(h.client, f"{w}-x", worker_id="b")
    await complete(h.client, other)  # this replica reads its view: no limit

    async def elsewhere(tx: Any) -> None:  # as another replica sets one: the view misses it
        await tx.execute(
            'INSERT INTO concurrency_limits (namespace, workflow, "limit", strategy, per_key,'
            " source, updated_at) VALUES ($1, $2, 1, 'queue', 0, 'operator', $3)",
            held["run"]["namespace"],
            w,
            START_MS,
        )

    await h.app.state.db.write(elsewhere)
    await start(h.client, workflow=w)
    got: list[dict[str, Any]] = []

    async def poll() -> None:
        got.extend(await claim(h.client, w, worker_id="a", wait_ms=60_000))

    idle = hub.waiting
    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await until_waiting(h, idle + 1)  # held up: the group's one slot is taken
        assert not got
        await complete(h.client, held)
    assert len(got) == 1
    assert hub.wakeups["slots"] == 1


@pytest.mark.only_on(
    "postgresql",
    "SQLite has one writer: no claim holds a group while another looks",
)
async def test_a_claim_that_leaves_room_wakes_a_poll_that_passed_its_group_over(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim never waits for a group another claim holds: it passes it over. That other
    claim, when it stops at its `max_runs` with room and runs of the group left, wakes the
    group's polls, or the one that passed it over sleeps until its wait runs out."""
    h = harness
    w = f"w-{uuid.uuid4().hex}"
    ids = [(await start(h.client, workflow=w, concurrency=limited(None, limit=5)))["id"]]
    ids.append((await start(h.client, workflow=w, concurrency=limited(None, limit=5)))["id"])
    looked = anyio.Event()
    claim_now = Claims.claim_now

    async def observed(self: Claims, *args: Any) -> list[Any]:
        claimed = await claim_now(self, *args)
        looked.set()
        return claimed

    monkeypatch.setattr(Claims, "claim_now", observed)
    got: list[dict[str, Any]] = []

    async def poll() -> None:
        got.extend(await claim(h.client, w, worker_id="b", wait_ms=60_000))

    namespace = (await get_run(h.client, ids[0]))["namespace"]
    with anyio.fail_after(30):  # the manual clock never ends the poll's wait
        async with anyio.create_task_group() as tg:
            async with h.app.state.db.transaction() as other:  # a claim holds the group
                await other.lock_key(Group(namespace, w, None, per_key=False).lock_name)
                tg.start_soon(poll)
                await looked.wait()  # it passed the group over, and waits
            assert not got
            (taken,) = await claim(h.client, w, worker_id="a", max_runs=1)  # leaves one
    # woken, it took the run left (unwoken, it would sleep on past the guard)
    assert [c["run"]["id"] for c in got] == [i for i in ids if i != taken["run"]["id"]]


async def test_a_freed_slot_wakes_only_the_long_polls_of_its_workflow(harness: Harness) -> None:
    """A slot of another workflow's limit wakes nothing; one of the polled workflow's does."""
    h = harness
    hub = h.app.state.hub
    w = f"w-{uuid.uuid4().hex}"  # the test's own: other servers NOTIFY on PostgreSQL
    for workflow in (f"{w}-x", w, w):
        await start(h.client, workflow=workflow, concurrency=limited(None, limit=1))
    (other,) = await claim(h.client, f"{w}-x", worker_id="b")
    (held,) = await claim(h.client, w, worker_id="b")
    got: list[dict[str, Any]] = []

    async def poll() -> None:
        got.extend(await claim(h.client, w, worker_id="a", wait_ms=60_000))

    idle = hub.waiting
    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await until_waiting(h, idle + 1)
        await complete(h.client, other)
        assert hub.wakeups["claim"] == hub.wakeups["slots"] == 0
        assert not got
        await complete(h.client, held)
    assert len(got) == 1
    assert hub.wakeups["slots"] == 1
