"""Retention: ended runs past their period vanish with everything they held; workers too."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from aiki_server import ServerSettings
from aiki_server._cli import _parser
from server_api import (
    claim_one,
    client_with,
    error_of,
    get_run,
    get_schedule,
    new_key,
    start,
    task_record,
    transition,
    wait_status,
)

if TYPE_CHECKING:
    import httpx

    from aiki_server._retention import Retention
    from server_api import Harness, HarnessFactory

DAY_MS = 86_400_000
RUN_TABLES = (
    "tasks",
    "sleeps",
    "events",
    "event_waits",
    "child_waits",
    "webhooks",
    "task_pushes",
    "state_transitions",
)


async def held(client: httpx.AsyncClient, workflow: str = "w") -> tuple[str, int]:
    """Start a run of `workflow` and claim it: its id and the claim's revision."""
    run = await start(client, workflow=workflow)
    claimed = await claim_one(client, workflow)
    return run["id"], claimed["run"]["revision"]


async def completed(client: httpx.AsyncClient, workflow: str = "w") -> str:
    """A run that recorded a task, an event and a webhook, then completed: its id."""
    run_id, revision = await held(client, workflow)
    r = await client.post(f"/runs/{run_id}/tasks", json=task_record(revision))
    assert r.status_code == 200, r.text
    r = await client.post(f"/runs/{run_id}/events", json={"name": "paid", "data": 1})
    assert r.status_code == 200, r.text
    r = await client.post(
        f"/runs/{run_id}/webhooks",
        json={"revision": revision, "event": "paid", "expires_in": 60_000, "schema": {}},
    )
    assert r.status_code == 201, r.text
    r = await transition(client, run_id, revision, {"kind": "complete", "result": 1})
    assert r.status_code == 200, r.text
    return run_id


async def sweep(h: Harness) -> int:
    retention: Retention = h.app.state.retention
    return await retention.sweep()


async def rows_of(h: Harness, run_id: str) -> dict[str, int]:
    """How many rows each table holds for the run (`runs` itself included)."""
    counts = {}
    async with h.app.state.db.reader() as tx:
        row = await tx.fetchrow("SELECT count(*) AS n FROM runs WHERE id = $1", run_id)
        counts["runs"] = row["n"]
        for table in RUN_TABLES:
            row = await tx.fetchrow(f"SELECT count(*) AS n FROM {table} WHERE run_id = $1", run_id)
            counts[table] = row["n"]
        row = await tx.fetchrow(
            "SELECT count(*) AS n FROM task_attempts a JOIN tasks t ON t.id = a.task_id"
            " WHERE t.run_id = $1",
            run_id,
        )
        counts["task_attempts"] = row["n"]
    return counts


async def exists(h: Harness, run_id: str) -> bool:
    return (await h.client.get(f"/runs/{run_id}")).status_code == 200


async def test_ended_runs_past_the_period_vanish_with_what_they_held(harness: Harness) -> None:
    h = harness
    old = await completed(h.client)
    assert (await rows_of(h, old))["tasks"] == 1
    h.advance(29 * DAY_MS)
    young = await completed(h.client)
    live, _ = await held(h.client)
    queued = (await start(h.client))["id"]
    h.advance(DAY_MS + 1)  # `old` ended 30 days and 1 ms ago

    assert await sweep(h) == 1
    assert await rows_of(h, old) == dict.fromkeys(["runs", *RUN_TABLES, "task_attempts"], 0)
    for kept in (young, live, queued):
        assert await exists(h, kept)
    assert (await rows_of(h, young))["tasks"] == 1
    assert await sweep(h) == 0  # nothing more is due

    h.advance(365 * DAY_MS)  # unfinished runs stay, however old
    assert await sweep(h) == 1
    assert not await exists(h, young)
    assert await exists(h, live)
    assert await exists(h, queued)
    metrics = (await h.client.get("http://aiki/metrics")).text
    assert 'aiki_retention_deleted_total{kind="runs"} 2.0' in metrics


async def test_many_runs_go_in_batches(make_harness: HarnessFactory) -> None:
    async with make_harness(retention=None) as h:
        ids = []
        for _ in range(120):  # more than one SQLite batch
            run_id, revision = await held(h.client)
            r = await transition(h.client, run_id, revision, {"kind": "complete", "result": 0})
            assert r.status_code == 200, r.text
            ids.append(run_id)
        h.advance(100 * 365 * DAY_MS)
        assert await sweep(h) == 0  # the server keeps runs forever
        r = await h.client.put("/retention", json={"retention": DAY_MS})
        assert r.status_code == 200, r.text
        assert await sweep(h) == 120
        r = await h.client.get("/runs", params={"limit": 500})
        assert r.json()["runs"] == []


async def test_a_namespace_retention_wins_over_the_servers(make_harness: HarnessFactory) -> None:
    async with make_harness(retention=None) as h:
        r = await h.client.get("/retention")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "namespace": "default",
            "retention": None,
            "source": "server",
            "updated_at": None,
        }
        short, long = await new_key(h.app, "short"), await new_key(h.app, "long")
        async with client_with(h.app, short.key) as a, client_with(h.app, long.key) as b:
            r = await a.put("/retention", json={"retention": DAY_MS})
            assert r.status_code == 200, r.text
            assert r.json()["retention"] == DAY_MS
            assert r.json()["source"] == "namespace"
            r = await b.put("/retention", json={"retention": 10 * DAY_MS})
            assert r.status_code == 200, r.text
            in_short, in_long = await completed(a), await completed(b)
            h.advance(2 * DAY_MS)
            assert await sweep(h) == 1
            assert (await a.get(f"/runs/{in_short}")).status_code == 404
            assert (await b.get(f"/runs/{in_long}")).status_code == 200

            r = await b.put("/retention", json={"retention": None})  # forever
            assert r.json() == {**r.json(), "retention": None, "source": "namespace"}
            h.advance(100 * DAY_MS)
            assert await sweep(h) == 0
            r = await b.delete("/retention")  # the server's (forever) again
            assert r.json()["source"] == "server"
            assert (await b.get("/retention")).json()["source"] == "server"

            r = await a.put("/retention", json={"retention": -1})
            error_of(r, 422, "payload_validation")
            r = await a.put("/retention", json={"retention": "1d"})
            error_of(r, 422, "payload_validation")


async def test_children_go_after_their_parents_end(harness: Harness) -> None:
    h = harness
    parent_id, revision = await held(h.client)
    r = await h.client.post(
        f"/runs/{parent_id}/children",
        json={
            "revision": revision,
            "address": "child:1",
            "occurrence": 0,
            "workflow": "child",
            "version": "1",
        },
    )
    assert r.status_code == 201, r.text
    child_id = r.json()["run"]["id"]
    child = await claim_one(h.client, "child")
    r = await transition(h.client, child_id, child["run"]["revision"], {"kind": "complete"})
    assert r.status_code == 200, r.text
    h.advance(40 * DAY_MS)
    assert await sweep(h) == 0  # the parent lives: its child stays
    assert await exists(h, child_id)

    await wait_status(h.client, parent_id, "queued")  # its idle claim was released
    revision = (await claim_one(h.client))["run"]["revision"]
    r = await transition(h.client, parent_id, revision, {"kind": "complete", "result": 2})
    assert r.status_code == 200, r.text
    assert await sweep(h) == 1  # the child ended long ago; the parent now
    assert not await exists(h, child_id)
    assert (await get_run(h.client, parent_id))["status"] == "completed"
    h.advance(31 * DAY_MS)
    assert await sweep(h) == 1
    assert not await exists(h, parent_id)


async def test_a_schedules_last_run_is_kept(harness: Harness) -> None:
    h = harness
    r = await h.client.post(
        "/schedules",
        json={"name": "s", "workflow": "w", "version": "1", "every": 3_600_000},
    )
    assert r.status_code == 201, r.text
    schedule_id = r.json()["id"]
    h.advance(3_600_000)
    with anyio.fail_after(5):  # the timer daemon fires it
        while (last := (await get_schedule(h.client, schedule_id))["last_run_id"]) is None:  # noqa: ASYNC110 - the state is in the database
            await anyio.sleep(0.01)
    claimed = await claim_one(h.client)
    r = await transition(h.client, last, claimed["run"]["revision"], {"kind": "complete"})
    assert r.status_code == 200, r.text
    r = await h.client.post(f"/schedules/{schedule_id}/pause")
    assert r.status_code == 200, r.text
    h.advance(60 * DAY_MS)
    assert await sweep(h) == 0
    assert await exists(h, last)


async def test_workers_not_seen_for_a_day_are_pruned(harness: Harness) -> None:
    h = harness
    await start(h.client)
    await claim_one(h.client, worker_id="gone")
    h.advance(DAY_MS - 1000)
    r = await h.client.post(
        "/claims",
        json={
            "worker_id": "here",
            "capabilities": [{"workflow": "w", "version": "1", "pool": "default"}],
            "max_runs": 1,
            "wait": 0,
        },
    )
    assert r.status_code == 200, r.text
    h.advance(2000)
    await sweep(h)
    workers = (await h.client.get("/workers")).json()["workers"]
    assert [w["id"] for w in workers] == ["here"]


async def test_a_zero_retention_deletes_at_the_next_sweep(make_harness: HarnessFactory) -> None:
    async with make_harness(retention=None) as h:
        r = await h.client.put("/retention", json={"retention": 0})
        assert r.status_code == 200, r.text
        run_id = await completed(h.client)
        h.advance(1)
        assert await sweep(h) == 1
        assert not await exists(h, run_id)


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="retention"):
        ServerSettings(retention=timedelta(days=-1))
    with pytest.raises(ValueError, match="max_events_per_run"):
        ServerSettings(max_events_per_run=0)


async def test_sweeps_at_once_share_the_work(make_harness: HarnessFactory) -> None:
    # on PostgreSQL each sweep has its own connection, as two replicas would: they take
    # different runs (SKIP LOCKED), and neither fails on what the other deleted
    async with make_harness(retention=timedelta(days=1)) as h:
        ids = []
        for _ in range(30):
            run_id, revision = await held(h.client)
            r = await transition(h.client, run_id, revision, {"kind": "complete"})
            assert r.status_code == 200, r.text
            ids.append(run_id)
        h.advance(2 * DAY_MS)
        counts: list[int] = []

        async def one() -> None:
            counts.append(await sweep(h))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
        assert sum(counts) == 30
        for run_id in ids:
            assert not await exists(h, run_id)


def test_server_options(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parser().parse_args([])
    assert (args.retention, args.worker_retention) == (timedelta(days=30), timedelta(days=1))
    args = _parser().parse_args(["--retention", "forever", "--worker-retention", "12h"])
    assert (args.retention, args.worker_retention) == (None, timedelta(hours=12))
    monkeypatch.setenv("AIKI_RETENTION", "90m")
    assert _parser().parse_args([]).retention == timedelta(minutes=90)
    assert _parser().parse_args(["serve", "--retention", "3600"]).retention == timedelta(hours=1)
    for bad in (["--retention", "soon"], ["--worker-retention", "forever"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(bad)


async def test_a_run_that_cannot_be_deleted_is_left_alone(harness: Harness) -> None:
    h = harness
    stuck, other = await completed(h.client), await completed(h.client)

    async def pin(tx: Any) -> None:  # a row the sweep does not know keeps `stuck`
        await tx.execute("CREATE TABLE pins (run_id TEXT NOT NULL REFERENCES runs (id))")
        await tx.execute("INSERT INTO pins (run_id) VALUES ($1)", stuck)

    await h.app.state.db.write(pin)
    h.advance(31 * DAY_MS)
    assert await sweep(h) == 1
    assert await exists(h, stuck)
    assert not await exists(h, other)
    assert (await rows_of(h, stuck))["tasks"] == 1  # nothing of it went

    async def unpin(tx: Any) -> None:
        await tx.execute("DELETE FROM pins")

    await h.app.state.db.write(unpin)
    assert await sweep(h) == 1
    assert not await exists(h, stuck)


async def test_runs_that_cannot_be_deleted_hold_up_none_behind_them(harness: Harness) -> None:
    """A whole batch of runs that fail to go, at the head of the order, does not stop
    the sweep: the next batch starts past them."""
    h = harness
    retention: Retention = h.app.state.retention
    retention._batch = 2
    stuck = [await completed(h.client), await completed(h.client)]
    h.advance(1_000)
    behind = [await completed(h.client) for _ in range(3)]

    async def pin(tx: Any) -> None:
        await tx.execute("CREATE TABLE pins (run_id TEXT NOT NULL REFERENCES runs (id))")
        for run_id in stuck:
            await tx.execute("INSERT INTO pins (run_id) VALUES ($1)", run_id)

    await h.app.state.db.write(pin)
    h.advance(31 * DAY_MS)
    assert await sweep(h) == 3
    assert [await exists(h, run_id) for run_id in stuck + behind] == [True] * 2 + [False] * 3


async def test_a_batch_is_bounded_by_the_history_its_runs_hold(harness: Harness) -> None:
    """Runs without a task call may still hold long histories (a loop of waits, say): a
    batch takes no more runs than its budget of history rows allows."""
    h = harness
    retention: Retention = h.app.state.retention
    retention._budget = 10  # history rows: each run below holds more
    ids = []
    for _ in range(3):
        run_id, revision = await held(h.client)
        for _ in range(4):  # 8 status moves, no task call
            r = await transition(h.client, run_id, revision, {"kind": "release"})
            assert r.status_code == 200, r.text
            revision = (await claim_one(h.client))["run"]["revision"]
        r = await transition(h.client, run_id, revision, {"kind": "complete"})
        assert r.status_code == 200, r.text
        assert (await rows_of(h, run_id))["state_transitions"] >= 10
        ids.append(run_id)
    h.advance(31 * DAY_MS)
    namespace = (await get_run(h.client, ids[0]))["namespace"]
    cutoff = h.clock.now - 30 * DAY_MS

    async def one_batch(tx: Any) -> tuple[int, tuple[int, str] | None]:
        return await retention._delete_runs(namespace, cutoff, None, tx)

    count, after = await h.app.state.db.write(one_batch)
    assert (count, after is not None) == (1, True)  # one run went, and more are due
    assert not await exists(h, ids[0])
    assert await exists(h, ids[1])
    assert await sweep(h) == 2


async def test_every_foreign_key_has_an_index_on_its_column(harness: Harness) -> None:
    """Deleting a row (retention deletes runs, tasks, events...) checks each foreign key
    that may name it: without an index on the naming column, once per deleted row the
    whole naming table is read."""
    db = harness.app.state.db
    async with db.reader() as tx:
        if db.dialect == "postgresql":
            unindexed = await tx.fetch(
                "SELECT c.conrelid::regclass::text AS tbl, a.attname AS col"
                " FROM pg_constraint c JOIN pg_attribute a"
                "   ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
                " WHERE c.contype = 'f' AND c.connamespace = current_schema()::regnamespace"
                " AND NOT EXISTS (SELECT 1 FROM pg_index i"
                "   WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1])"
            )
        else:
            unindexed = await tx.fetch(
                'SELECT t.name AS tbl, f."from" AS col FROM sqlite_master t,'
                " pragma_foreign_key_list(t.name) f WHERE t.type = 'table' AND f.seq = 0"
                " AND NOT EXISTS (SELECT 1 FROM pragma_index_list(t.name) i,"
                '   pragma_index_info(i.name) c WHERE c.seqno = 0 AND c.name = f."from")'
            )
    assert [(row["tbl"], row["col"]) for row in unindexed] == []
