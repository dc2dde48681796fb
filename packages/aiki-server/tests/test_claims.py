"""Claims: exactly-once hand-out, capability matching, long-polls, heartbeats, idle recovery.

Every test runs on SQLite and on PostgreSQL (the `db_url` fixture is parametrized).
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from aiki_core.wire import StartRunRequest
from aiki_server import _lifecycle
from aiki_server._claims import Claims
from aiki_server._starts import start_run_in
from server_api import (
    claim,
    claim_one,
    get_run,
    plan,
    record_statements,
    start,
    timer_pass,
    transition,
    until_waiting,
    wait_status,
)

if TYPE_CHECKING:
    import httpx

    from server_api import Harness, HarnessFactory

W = "w"


def cap(version: str = "1", pool: str = "default", workflow: str = W) -> dict[str, str]:
    return {"workflow": workflow, "version": version, "pool": pool}


async def heartbeat(
    client: httpx.AsyncClient, worker: str, leases: list[tuple[str, int]]
) -> dict[str, str]:
    r = await client.post(
        "/heartbeats",
        json={"worker_id": worker, "runs": [{"run_id": i, "revision": v} for i, v in leases]},
    )
    assert r.status_code == 200, r.text
    return {a["run_id"]: a["directive"] for a in r.json()["runs"]}


async def claim_expires_at(h: Harness, run_id: str) -> int | None:
    """The claim's expiry in epoch ms, read from the database (the API does not show it)."""
    async with h.app.state.db.reader() as tx:
        row = await tx.fetchrow("SELECT claim_expires_at FROM runs WHERE id = $1", run_id)
    assert row is not None
    value = row["claim_expires_at"]
    return None if value is None else int(value)


# -- exactly once ------------------------------------------------------------------------


async def test_twenty_claimers_hand_out_500_runs_exactly_once(server: httpx.AsyncClient) -> None:
    started: list[str] = []

    async def start_batch(count: int) -> None:
        started.extend([(await start(server))["id"] for _ in range(count)])

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(start_batch, 100)
    assert len(set(started)) == 500

    claimed: list[str] = []
    per_worker: dict[str, int] = {}
    rng = random.Random(7)

    async def claimer(worker: str) -> None:
        while True:
            runs = await claim(server, worker_id=worker, max_runs=rng.randint(1, 10), wait_ms=100)
            if not runs:
                return
            for run in runs:
                assert run["run"]["status"] == "running"
                assert run["run"]["revision"] == 1
                claimed.append(run["run"]["id"])
            per_worker[worker] = per_worker.get(worker, 0) + len(runs)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(claimer, f"worker-{n}")

    assert len(claimed) == 500
    assert len(set(claimed)) == 500, "a run was handed out twice"
    assert set(claimed) == set(started)
    assert len(per_worker) > 1, "the claimers did not actually compete"

    r = await server.get("/runs", params={"limit": 500})
    assert r.status_code == 200, r.text
    runs = r.json()["runs"]
    assert len(runs) == 500
    assert {run["status"] for run in runs} == {"running"}
    assert {run["revision"] for run in runs} == {1}


# -- capabilities ------------------------------------------------------------------------


async def test_claims_only_hand_out_declared_triples(server: httpx.AsyncClient) -> None:
    v1 = {(await start(server, version="v1"))["id"] for _ in range(3)}
    v2 = {(await start(server, version="v2"))["id"] for _ in range(2)}
    gpu = {(await start(server, version="v1", pool="gpu"))["id"] for _ in range(2)}
    other = await server.post("/runs", json={"workflow": "x", "version": "v1"})
    assert other.status_code == 201, other.text

    only_v1 = [cap("v1")]
    got = await claim(server, worker_id="a", capabilities=only_v1, max_runs=100)
    ids = {r["run"]["id"] for r in got}
    assert {(r["run"]["version"], r["run"]["pool"]) for r in got} == {("v1", "default")}
    assert ids == v1
    assert await claim(server, worker_id="a", capabilities=only_v1, max_runs=100) == []

    # a worker lacking v2 never gets it: the v2 runs stay queued and say why
    assert (
        await claim(
            server, worker_id="b", capabilities=[cap("v3"), cap("v2", pool="gpu")], max_runs=100
        )
        == []
    )
    for run_id in v2:
        detail = await get_run(server, run_id)
        assert detail["status"] == "queued"
        assert detail["revision"] == 0
        assert detail["pending_reason"] is not None
        assert "'v2'" in detail["pending_reason"]

    got = await claim(server, worker_id="c", capabilities=[cap("v2")], max_runs=100)
    assert {r["run"]["id"] for r in got} == v2
    got = await claim(server, worker_id="d", capabilities=[cap("v1", pool="gpu")], max_runs=100)
    assert {r["run"]["id"] for r in got} == gpu


async def test_claim_matches_whole_triples_not_their_parts(server: httpx.AsyncClient) -> None:
    # (v1, gpu) and (v2, default) are declared; (v1, default) and (v2, gpu) are not
    await start(server, version="v1")
    await start(server, version="v2", pool="gpu")
    other_workflow = await server.post("/runs", json={"workflow": "x", "version": "v2"})
    assert other_workflow.status_code == 201, other_workflow.text
    assert (
        await claim(
            server, worker_id="a", capabilities=[cap("v1", pool="gpu"), cap("v2")], max_runs=10
        )
        == []
    )


# -- long-polls --------------------------------------------------------------------------


async def test_claim_long_polls_until_a_run_is_started(server: httpx.AsyncClient) -> None:
    got: list[dict[str, Any]] = []
    elapsed: list[float] = []

    async def poll() -> None:
        t0 = time.monotonic()
        got.extend(await claim(server, worker_id="a", wait_ms=5000))
        elapsed.append(time.monotonic() - t0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await anyio.sleep(0.2)
        run = await start(server)

    assert [r["run"]["id"] for r in got] == [run["id"]]
    assert elapsed[0] < 2.5, f"the claim returned after {elapsed[0]:.2f} s"


async def test_claim_with_nothing_to_do_returns_empty_after_its_wait(
    server: httpx.AsyncClient,
) -> None:
    await start(server, version="other-version")
    t0 = time.monotonic()
    assert await claim(server, worker_id="a", wait_ms=300) == []
    elapsed = time.monotonic() - t0
    assert 0.29 <= elapsed < 2.0, elapsed


async def test_an_empty_poll_reads_once(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll that finds nothing sends one statement: cleanups and queued runs in one read."""
    h = harness
    await start(h.client, version="other-version")  # not of the triple polled
    two = [{"workflow": name, "version": "1", "pool": "default"} for name in ("w", "v")]
    assert await claim(h.client, capabilities=two) == []  # notes the worker
    sent = record_statements(monkeypatch)

    assert await claim(h.client, capabilities=two) == []

    assert len(sent) == 1, sent
    # and the read sees both: a cleanup, then a queued run
    monkeypatch.undo()
    run = await start(h.client)
    held = await claim_one(h.client)
    r = await h.client.post(f"/runs/{run['id']}/cancel", json={"reason": "enough"})
    assert r.status_code == 200, r.text
    assert held["run"]["id"] == run["id"]
    queued = await start(h.client)
    claimed = await claim(h.client, capabilities=two, max_runs=2)
    assert [c["run"]["id"] for c in claimed] == [run["id"], queued["id"]]
    assert claimed[0]["cleanup"]["code"] == "workflow_cancelled"


async def start_in(h: Harness, namespace: str, workflow: str, version: str = "1") -> None:
    """Start a run in `namespace` through the server's own start (no API key needed)."""
    req = StartRunRequest(workflow=workflow, version=version)
    await h.app.state.db.write(lambda tx: start_run_in(tx, namespace, req, h.clock.now))


async def test_a_queued_run_wakes_only_the_long_polls_of_its_triple(harness: Harness) -> None:
    """A run queued in another namespace, workflow, version or pool wakes no long-poll of
    its triple; a run of that triple wakes it, and it claims the run.

    The workflow's name is the test's own: on PostgreSQL, other servers on the database
    (other tests) NOTIFY the same channel.
    """
    h = harness
    w = f"w-{uuid.uuid4().hex}"
    hub = h.app.state.hub
    got: list[dict[str, Any]] = []

    async def poll() -> None:
        got.extend(await claim(h.client, w, worker_id="a", wait_ms=60_000))

    idle = hub.waiting  # the daemons' subscriptions
    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await until_waiting(h, idle + 1)
        await start_in(h, "elsewhere", w)
        await start(h.client, workflow=f"{w}-x")
        await start(h.client, workflow=w, version="2")
        await start(h.client, workflow=w, pool="other")
        # each start published its topics after its commit, before it answered
        assert hub.wakeups["claim"] == hub.wakeups["slots"] == 0
        assert not got
        run = await start(h.client, workflow=w)
    assert [r["run"]["id"] for r in got] == [run["id"]]
    assert hub.wakeups["claim"] == 1


@pytest.mark.only_on(
    "postgresql",
    "SQLite has one writer: no claim meets a run another transaction locks",
)
async def test_a_queued_parent_locked_by_its_childs_end_is_claimed_after_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child's end locks its parent (to end the parent's wait on it). A parent queued
    meanwhile, not waiting on it, is skipped by a claim while that lock is held (SKIP
    LOCKED): the child's end makes the parent's claims look again once it commits."""
    h = harness
    w = f"w-{uuid.uuid4().hex}"
    parent = (await start(h.client, workflow=w))["id"]
    revision = (await claim_one(h.client, w, worker_id="a"))["run"]["revision"]
    body = {"revision": revision, "address": "c:1", "occurrence": 0, "workflow": f"{w}-c"}
    r = await h.client.post(f"/runs/{parent}/children", json={**body, "version": "1"})
    assert r.status_code == 201, r.text
    child = await claim_one(h.client, f"{w}-c", worker_id="a")
    r = await transition(h.client, parent, revision, {"kind": "release"})
    assert r.status_code == 200, r.text  # queued, and not waiting on its child

    locked, go_on, looked = anyio.Event(), anyio.Event(), anyio.Event()
    close_children = _lifecycle._close_children

    async def held_open(tx: Any, parent_id: str, *args: Any) -> None:
        if parent_id == child["run"]["id"]:  # the child's end holds its parent's lock
            locked.set()
            await go_on.wait()
        await close_children(tx, parent_id, *args)

    claim_now = Claims.claim_now

    async def observed(self: Claims, *args: Any) -> list[Any]:
        claimed = await claim_now(self, *args)
        looked.set()
        return claimed

    monkeypatch.setattr(_lifecycle, "_close_children", held_open)
    monkeypatch.setattr(Claims, "claim_now", observed)
    got: list[dict[str, Any]] = []

    async def end_child() -> None:
        run = child["run"]
        r = await transition(h.client, run["id"], run["revision"], {"kind": "complete"})
        assert r.status_code == 200, r.text

    async def poll() -> None:
        got.extend(await claim(h.client, w, worker_id="b", wait_ms=60_000))

    with anyio.fail_after(30):  # the manual clock never ends the poll's wait
        async with anyio.create_task_group() as tg:
            tg.start_soon(end_child)
            await locked.wait()
            tg.start_soon(poll)
            await looked.wait()  # it skipped the locked parent, and waits
            assert not got
            go_on.set()
    assert [c["run"]["id"] for c in got] == [parent]


# -- heartbeats --------------------------------------------------------------------------


async def worker_row(h: Harness, worker_id: str) -> tuple[str, int]:
    """The worker's noted triples (as stored) and when it was last seen."""
    async with h.app.state.db.reader() as tx:
        row = await tx.fetchrow(
            "SELECT capabilities, last_seen_at FROM workers WHERE id = $1", worker_id
        )
    assert row is not None
    return row["capabilities"], int(row["last_seen_at"])


async def test_polls_note_the_worker_when_new_changed_or_due(harness: Harness) -> None:
    h = harness
    started = h.clock.now
    assert await claim(h.client, worker_id="a") == []
    noted, seen = await worker_row(h, "a")
    assert seen == started

    # the next polls write nothing: the worker is still live
    h.clock.advance(1_000)
    assert await claim(h.client, worker_id="a") == []
    assert await worker_row(h, "a") == (noted, started)

    # new triples are written at once
    assert await claim(h.client, worker_id="a", capabilities=[cap("2")]) == []
    changed, seen = await worker_row(h, "a")
    assert changed != noted
    assert seen == h.clock.now

    # and the same triples again once a quarter of the idle timeout (90 s) has passed
    h.clock.advance(22_500)
    assert await claim(h.client, worker_id="a", capabilities=[cap("2")]) == []
    assert await worker_row(h, "a") == (changed, h.clock.now)


async def test_heartbeat_continues_a_held_run_and_extends_its_claim(harness: Harness) -> None:
    h = harness
    run_id = (await start(h.client))["id"]
    run = (await claim_one(h.client, worker_id="a"))["run"]
    assert run["revision"] == 1
    assert await claim_expires_at(h, run_id) == h.clock.now + 90_000  # the default idle timeout

    h.clock.advance(30_000)
    assert await heartbeat(h.client, "a", [(run_id, 1)]) == {run_id: "continue"}
    assert await claim_expires_at(h, run_id) == h.clock.now + 90_000


async def test_heartbeat_answers_lost_for_a_stale_revision_or_another_worker(
    harness: Harness,
) -> None:
    h = harness
    run_id = (await start(h.client))["id"]
    await claim_one(h.client, worker_id="a")
    expires = await claim_expires_at(h, run_id)

    h.clock.advance(10_000)
    assert await heartbeat(h.client, "a", [(run_id, 0)]) == {run_id: "lost"}
    assert await heartbeat(h.client, "a", [(run_id, 2)]) == {run_id: "lost"}
    assert await heartbeat(h.client, "b", [(run_id, 1)]) == {run_id: "lost"}
    unknown = "01J0000000000000000000NONE"
    assert await heartbeat(h.client, "a", [(unknown, 1)]) == {unknown: "lost"}
    # none of them refreshed the claim
    assert await claim_expires_at(h, run_id) == expires
    detail = await get_run(h.client, run_id)
    assert (detail["status"], detail["revision"]) == ("running", 1)


async def test_heartbeat_answers_cancel_for_a_cancelled_run(server: httpx.AsyncClient) -> None:
    run_id = (await start(server))["id"]
    run = (await claim_one(server, worker_id="a"))["run"]
    r = await server.post(f"/runs/{run_id}/cancel", json={"reason": "enough"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cleaning_up"  # it ran: it cleans up first
    assert await heartbeat(server, "a", [(run_id, run["revision"])]) == {run_id: "cancel"}


async def test_heartbeat_answers_pause_for_a_pausing_run_and_keeps_its_claim(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness(claim_idle_timeout=timedelta(seconds=10)) as h:
        run_id = (await start(h.client))["id"]
        run = (await claim_one(h.client, worker_id="a"))["run"]
        r = await h.client.post(f"/runs/{run_id}/pause")
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["pause_requested"]) == ("running", True)
        for _ in range(2):  # each heartbeat renews the claim, so it never goes idle
            h.clock.advance(6_000)
            assert await heartbeat(h.client, "a", [(run_id, run["revision"])]) == {run_id: "pause"}
            await timer_pass(h)
        assert (await get_run(h.client, run_id))["status"] == "running"


async def test_heartbeat_answers_each_run_on_its_own(server: httpx.AsyncClient) -> None:
    ids = [(await start(server))["id"] for _ in range(3)]
    got = await claim(server, worker_id="a", max_runs=3)
    assert sorted(r["run"]["id"] for r in got) == sorted(ids)
    held, cancelled, paused = ids
    assert (await server.post(f"/runs/{cancelled}/cancel")).status_code == 200
    assert (await server.post(f"/runs/{paused}/pause")).status_code == 200
    answers = await heartbeat(server, "a", [(i, 1) for i in ids])
    assert answers == {held: "continue", cancelled: "cancel", paused: "pause"}


# -- idle claims -------------------------------------------------------------------------


async def test_idle_claim_is_requeued_and_claimed_by_another_worker(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness(claim_idle_timeout=timedelta(seconds=5)) as h:
        run_id = (await start(h.client))["id"]
        run_a = (await claim_one(h.client, worker_id="worker-a"))["run"]
        assert run_a["revision"] == 1

        h.advance(6_000)
        queued = await wait_status(h.client, run_id, "queued")
        # the release fences worker A: the revision moves past the one A holds
        assert queued["revision"] == 2
        detail = await get_run(h.client, run_id)
        last = detail["history"][-1]
        assert (last["from_status"], last["to_status"]) == ("running", "queued")
        assert "worker-a" in last["reason"]
        assert "idle" in last["reason"]
        assert last["revision"] == 2
        assert await heartbeat(h.client, "worker-a", [(run_id, 1)]) == {run_id: "lost"}

        run_b = (await claim_one(h.client, worker_id="worker-b"))["run"]
        assert run_b["id"] == run_id
        # a claim bumps the revision once more (the idle release already bumped it)
        assert run_b["revision"] == 3
        before = await get_run(h.client, run_id)

        # worker A comes back from the dead: every write it tries is fenced off
        writes = [
            (f"/runs/{run_id}/transition", {"revision": 1, "action": {"kind": "complete"}}),
            (
                f"/runs/{run_id}/tasks",
                {
                    "revision": 1,
                    "name": "t",
                    "address": "t",
                    "occurrence": 0,
                    "attempt": 1,
                    "status": "completed",
                    "result": 1,
                },
            ),
            (
                f"/runs/{run_id}/children",
                {
                    "revision": 1,
                    "address": "c",
                    "occurrence": 0,
                    "workflow": "child",
                    "version": "1",
                },
            ),
        ]
        for path, body in writes:
            r = await h.client.post(path, json=body)
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == "stale_revision", r.text

        after = await get_run(h.client, run_id)
        assert after == before
        assert after["status"] == "running"
        assert after["tasks"] == [] and after["children"] == []
        assert await heartbeat(h.client, "worker-b", [(run_id, 3)]) == {run_id: "continue"}


async def test_a_heartbeating_worker_keeps_its_run(make_harness: HarnessFactory) -> None:
    async with make_harness(claim_idle_timeout=timedelta(seconds=5)) as h:
        run_id = (await start(h.client))["id"]
        idle_id = (await start(h.client))["id"]
        got = await claim(h.client, worker_id="a", max_runs=2)
        assert {r["run"]["id"] for r in got} == {run_id, idle_id}

        for _ in range(4):  # 12 s in all, more than twice the idle timeout
            h.advance(3_000)
            await timer_pass(h)
            assert await heartbeat(h.client, "a", [(run_id, 1)]) == {run_id: "continue"}

        detail = await get_run(h.client, run_id)
        assert (detail["status"], detail["revision"]) == ("running", 1)
        assert [t["to_status"] for t in detail["history"]] == ["queued", "running"]
        # the same worker's other run, never heartbeated, went back to the queue
        idle = await get_run(h.client, idle_id)
        assert idle["status"] == "queued"


# -- across replicas ---------------------------------------------------------------------


async def test_claim_on_one_replica_is_woken_by_a_start_on_another(
    server: httpx.AsyncClient, second_app: httpx.AsyncClient
) -> None:
    # `second_app` skips on SQLite: replicas share a database only on PostgreSQL
    got: list[dict[str, Any]] = []
    returned_at: list[float] = []

    async def poll() -> None:
        got.extend(await claim(second_app, worker_id="b", wait_ms=5000))
        returned_at.append(time.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        # let the claim find nothing and park: it looks again only when woken, or at its end
        await anyio.sleep(0.25)
        started_at = time.monotonic()
        run = await start(server)

    assert [r["run"]["id"] for r in got] == [run["id"]]
    latency = returned_at[0] - started_at
    # well before the claim's end (5 s away), its only other look: the NOTIFY woke it
    assert latency < 4, f"the claim on the other replica took {latency:.2f} s"


async def test_the_empty_polls_read_goes_by_the_queues_index(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its cleanups and its queued runs are each read through `runs_queue`."""
    h = harness
    await start(h.client, version="other-version")  # not of the triple polled
    assert await claim(h.client) == []  # notes the worker
    sent = record_statements(monkeypatch)
    assert await claim(h.client) == []
    monkeypatch.undo()
    [(sql, args)] = sent  # the poll's one read

    async def explained(tx: Any) -> str:
        return await plan(tx, sql, *args)

    explain = await h.app.state.db.write(explained)
    assert explain.count("runs_queue") >= 2, explain
