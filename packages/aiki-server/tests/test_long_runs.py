"""Long runs: a history of any length is claimed, the per-run task limit, poison runs.

Every test runs on SQLite and on PostgreSQL (the `db_url` fixture is parametrized).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server_api import (
    claim,
    claim_one,
    error_of,
    get_run,
    iso,
    start,
    task_record,
    transition,
    wait_status,
)

if TYPE_CHECKING:
    from server_api import Harness, HarnessFactory

LONG_HISTORY = 33_000
"""More task calls than a statement may take bind parameters (32,767 in asyncpg)."""


async def _claimed_then_released(h: Harness) -> dict[str, Any]:
    """A run of the queue, claimed once and released: its next claim replays its history."""
    run = await start(h.client)
    claimed = await claim_one(h.client)
    assert claimed["run"]["id"] == run["id"]
    r = await transition(h.client, run["id"], 1, {"kind": "release"})
    assert r.status_code == 200, r.text
    return run


async def _insert_tasks(h: Harness, run_id: str, count: int) -> None:
    """`count` completed task calls of the run, each with one attempt, straight into the
    database (recording them one request at a time would take minutes)."""
    ids = [f"{run_id}-{n:06d}" for n in range(count)]
    async with h.app.state.db.transaction() as tx:
        await tx.executemany(
            "INSERT INTO tasks (id, run_id, address, occurrence, name, status, input, result,"
            " created_at, finished_at) VALUES ($1, $2, $3, 0, 'step', 'completed', $4, $5, $6, $6)",
            [(ids[n], run_id, f"step:{n}", str(n), str(n * 2), h.clock.now) for n in range(count)],
        )
        await tx.executemany(
            "INSERT INTO task_attempts (task_id, attempt, status, started_at, finished_at)"
            " VALUES ($1, 1, 'completed', $2, $2)",
            [(task_id, h.clock.now) for task_id in ids],
        )
        await tx.execute("UPDATE runs SET task_count = $2 WHERE id = $1", run_id, count)


async def test_a_run_with_33000_tasks_is_claimed_and_its_queue_served(harness: Harness) -> None:
    long = await _claimed_then_released(harness)
    await _insert_tasks(harness, long["id"], LONG_HISTORY)
    other = await start(harness.client)

    claimed = await claim(harness.client, max_runs=2)

    by_id = {c["run"]["id"]: c for c in claimed}
    assert set(by_id) == {long["id"], other["id"]}
    tasks = by_id[long["id"]]["tasks"]
    assert len(tasks) == LONG_HISTORY
    assert all(len(t["attempts"]) == 1 for t in tasks)
    assert {t["result"] for t in tasks[:3]} == {0, 2, 4}
    detail = await get_run(harness.client, long["id"])
    assert len(detail["tasks"]) == LONG_HISTORY


async def test_a_heartbeat_for_many_runs_takes_one_parameter(harness: Harness) -> None:
    run = await start(harness.client)
    claimed = await claim_one(harness.client)
    leases = [{"run_id": run["id"], "revision": claimed["run"]["revision"]}]
    # runs the worker no longer holds (ids nothing has): each is answered `lost`
    leases += [{"run_id": f"01J{n:023d}", "revision": 1} for n in range(9_999)]

    r = await harness.client.post("/heartbeats", json={"worker_id": "worker-1", "runs": leases})

    assert r.status_code == 200, r.text
    directives = {a["run_id"]: a["directive"] for a in r.json()["runs"]}
    assert directives[run["id"]] == "continue"
    assert sum(d == "lost" for d in directives.values()) == 9_999


async def test_a_record_past_the_task_limit_fails_the_run(make_harness: HarnessFactory) -> None:
    async with make_harness(max_tasks_per_run=2) as h:
        run = await start(h.client)
        revision = (await claim_one(h.client))["run"]["revision"]
        failed = {"type": "OSError", "message": "try again"}
        records = [
            task_record(revision, address="charge:0"),
            task_record(
                revision,
                address="charge:1",
                status="awaiting_retry",
                result=None,
                error=failed,
                retry_at="2100-01-01T00:00:00Z",
            ),
            # a call already on record is no new call: its next attempt does not count
            task_record(revision, address="charge:1", attempt=2),
        ]
        for record in records:
            r = await h.client.post(f"/runs/{run['id']}/tasks", json=record)
            assert r.status_code == 200, r.text

        r = await h.client.post(
            f"/runs/{run['id']}/tasks", json=task_record(revision, address="charge:2")
        )

        details = error_of(r, 409, "run_limit_exceeded")
        assert details == {"run_id": run["id"], "limit": 2}
        detail = await get_run(h.client, run["id"])
        assert detail["status"] == "failed"
        assert detail["error"]["code"] == "run_limit_exceeded"
        assert "continue_as_new" in detail["error"]["message"]
        assert [t["address"] for t in detail["tasks"]] == ["charge:0", "charge:1"]
        # the worker's claim is over: its next write is refused, and the queue goes on
        r = await transition(h.client, run["id"], revision, {"kind": "complete", "result": 1})
        assert r.status_code == 409, r.text
        other = await start(h.client)
        assert (await claim_one(h.client))["run"]["id"] == other["id"]


async def test_a_transition_past_the_task_limit_fails_the_run(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness(max_tasks_per_run=2) as h:
        run = await start(h.client)
        revision = (await claim_one(h.client))["run"]["revision"]
        records = [task_record(revision, address=f"charge:{n}") for n in range(3)]

        r = await h.client.post(
            f"/runs/{run['id']}/transition",
            json={"revision": revision, "action": {"kind": "complete"}, "tasks": records},
        )

        error_of(r, 409, "run_limit_exceeded")
        detail = await get_run(h.client, run["id"])
        assert detail["status"] == "failed"
        assert detail["error"]["code"] == "run_limit_exceeded"
        assert detail["tasks"] == []  # the refused transition wrote none of its records


async def test_a_run_that_cannot_be_claimed_is_set_aside_then_failed(harness: Harness) -> None:
    poison = await _claimed_then_released(harness)
    # a row no claim can read back: the run cannot be handed to any worker
    async with harness.app.state.db.transaction() as tx:
        await tx.execute(
            "INSERT INTO tasks (id, run_id, address, occurrence, name, status, input,"
            " created_at) VALUES ('bad', $1, 'x', 0, 'x', 'no-such-status', 'null', $2)",
            poison["id"],
            harness.clock.now,
        )
    healthy = [await start(harness.client) for _ in range(3)]

    served: list[str] = []
    for _ in range(3):  # each claim fails the poison run's claim once more
        served += [c["run"]["id"] for c in await claim(harness.client, max_runs=2)]

    assert served == [run["id"] for run in healthy]  # the queue behind it was served
    # (its detail cannot be read either: the bad row is in it; its outcome can)
    outcome = await wait_status(harness.client, poison["id"], "failed")
    assert "could not be claimed" in outcome["error"]["message"]
    assert "no-such-status" in outcome["error"]["message"]
    async with harness.app.state.db.reader() as tx:
        history = await tx.fetch(
            "SELECT reason FROM state_transitions WHERE run_id = $1", poison["id"]
        )
    assert sum("claim failed" in (row["reason"] or "") for row in history) == 3


async def test_a_later_run_attempt_records_a_failed_task_again(harness: Harness) -> None:
    run = await start(harness.client)
    revision = (await claim_one(harness.client))["run"]["revision"]
    failed = task_record(
        revision, status="failed", result=None, error={"type": "OSError", "message": "down"}
    )
    r = await harness.client.post(f"/runs/{run['id']}/tasks", json=failed)
    assert r.status_code == 200, r.text
    # the same attempt of the run may not reopen it: the failure is final there
    r = await harness.client.post(f"/runs/{run['id']}/tasks", json=task_record(revision, attempt=2))
    error_of(r, 409, "illegal_transition")
    retry_at = iso(harness.clock.now + 1_000)
    r = await transition(
        harness.client,
        run["id"],
        revision,
        {"kind": "fail", "error": {"type": "OSError", "message": "down"}, "retry_at": retry_at},
    )
    assert r.status_code == 200, r.text
    harness.advance(1_000)
    await wait_status(harness.client, run["id"], "queued")

    again = await claim_one(harness.client)
    assert again["run"]["attempt"] == 2
    (task,) = again["tasks"]
    assert (task["status"], task["run_attempt"]) == ("failed", 1)
    revision = again["run"]["revision"]
    r = await harness.client.post(f"/runs/{run['id']}/tasks", json=task_record(revision, attempt=2))

    assert r.status_code == 200, r.text
    (task,) = (await get_run(harness.client, run["id"]))["tasks"]
    assert (task["status"], task["run_attempt"], task["result"]) == ("completed", 2, 7)
    assert [(a["attempt"], a["status"], a["run_attempt"]) for a in task["attempts"]] == [
        (1, "failed", 1),
        (2, "completed", 2),
    ]


async def test_a_cleanup_that_cannot_be_claimed_holds_up_no_other_cleanup(
    harness: Harness,
) -> None:
    h = harness
    poison = await _claimed_then_released(h)
    async with h.app.state.db.transaction() as tx:  # a row no claim can read back
        await tx.execute(
            "INSERT INTO tasks (id, run_id, address, occurrence, name, status, input,"
            " created_at) VALUES ('bad', $1, 'x', 0, 'x', 'no-such-status', 'null', $2)",
            poison["id"],
            h.clock.now,
        )
    healthy = [(await start(h.client))["id"] for _ in range(2)]
    await claim(h.client, max_runs=2)  # they run
    r = await h.client.post(f"/runs/{poison['id']}/cancel", json={})
    assert r.json()["status"] == "cleaning_up"  # first in line for a cleanup claim
    for run_id in healthy:
        h.clock.advance(1)
        r = await h.client.post(f"/runs/{run_id}/cancel", json={})
        assert r.json()["status"] == "cleaning_up"

    served = [c["run"]["id"] for _ in range(2) for c in await claim(h.client)]
    assert served == healthy  # each claimed for its cleanup, behind the one that fails
    assert (await get_run(h.client, healthy[0]))["status"] == "cleaning_up"
    outcome = await wait_status(h.client, poison["id"], "cleaning_up")
    assert outcome["status"] == "cleaning_up"  # left to its deadline
