"""The timer daemon, driven by a manual clock: delayed starts, sleeps, wait timeouts,
retry back-offs, run deadlines, several waits at once, parents woken by children, and
batches.

Every test runs on SQLite and on PostgreSQL (the `db_url` fixture is parametrized).
"""

from __future__ import annotations

import dataclasses
import functools
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio

from aiki_server._timers import SET_ASIDE_AFTER
from server_api import (
    claim,
    claim_one,
    create_schedule,
    get_run,
    get_schedule,
    iso,
    start,
    task_record,
    timer_pass,
    transition,
    wait_status,
)

if TYPE_CHECKING:
    import httpx
    import pytest

    from aiki_server._storage._database import Database
    from server_api import Harness, HarnessFactory

W = "w"
SECOND = 1_000
DAY = 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CAPS = [{"workflow": W, "version": "1"}, {"workflow": "child", "version": "1"}]


async def start_and_claim(h: Harness, **extra: Any) -> dict[str, Any]:
    run_id = (await start(h.client, **extra))["id"]
    claimed = await claim_one(h.client, worker_id="worker", capabilities=CAPS)
    assert claimed["run"]["id"] == run_id
    run: dict[str, Any] = claimed["run"]
    return run


async def suspend(
    client: httpx.AsyncClient, run: dict[str, Any], *waits: dict[str, Any]
) -> dict[str, Any]:
    r = await transition(
        client, run["id"], run["revision"], {"kind": "suspend", "waits": list(waits)}
    )
    assert r.status_code == 200, r.text
    summary: dict[str, Any] = r.json()["run"]
    return summary


async def status_after_pass(h: Harness, run_id: str) -> str:
    """The run's status once the daemon has surely looked at the current time."""
    await timer_pass(h)
    status: str = (await get_run(h.client, run_id))["status"]
    return status


def at(timestamp: str) -> int:
    """Epoch milliseconds of a timestamp the server rendered."""
    return (datetime.fromisoformat(timestamp) - EPOCH) // timedelta(milliseconds=1)


def fail_action(message: str = "boom") -> dict[str, Any]:
    return {
        "kind": "fail",
        "error": {"type": "builtins.ValueError", "message": message, "retryable": False},
    }


# -- single due times --------------------------------------------------------------------


async def test_delayed_start_is_queued_when_its_time_comes(harness: Harness) -> None:
    h = harness
    run = await start(h.client, delay=60_000)
    assert run["status"] == "scheduled"
    assert run["start_at"] is not None
    assert datetime.fromisoformat(run["start_at"]) == datetime.fromtimestamp(
        (h.clock.now + 60_000) / 1000, tz=UTC
    )
    assert await claim(h.client, worker_id="worker", capabilities=CAPS) == []

    h.advance(59 * SECOND)
    assert await status_after_pass(h, run["id"]) == "scheduled"
    assert await claim(h.client, worker_id="worker", capabilities=CAPS) == []

    h.advance(2 * SECOND)
    await wait_status(h.client, run["id"], "queued")
    detail = await get_run(h.client, run["id"])
    assert detail["history"][-1]["reason"] == "start time reached"
    claimed = await claim_one(h.client, worker_id="worker", capabilities=CAPS)
    assert claimed["run"]["id"] == run["id"]


async def test_start_at_in_the_past_is_queued_at_once(harness: Harness) -> None:
    h = harness
    run = await start(h.client, start_at=iso(h.clock.now - 1_000))
    assert run["status"] == "queued"


async def test_sleep_completes_and_the_next_claim_carries_it(harness: Harness) -> None:
    h = harness
    run = await start_and_claim(h)
    wake_at = h.clock.now + DAY
    sleep = {"kind": "sleep", "name": "s", "occurrence": 0, "wake_at": iso(wake_at)}
    assert (await suspend(h.client, run, sleep))["status"] == "sleeping"

    h.advance(DAY - SECOND)
    assert await status_after_pass(h, run["id"]) == "sleeping"

    h.advance(SECOND)
    await wait_status(h.client, run["id"], "queued")
    detail = await get_run(h.client, run["id"])
    assert [(s["name"], s["status"]) for s in detail["sleeps"]] == [("s", "completed")]
    assert datetime.fromisoformat(detail["sleeps"][0]["completed_at"]) == datetime.fromtimestamp(
        h.clock.now / 1000, tz=UTC
    )

    again = await claim_one(h.client, worker_id="worker", capabilities=CAPS)
    assert again["run"]["id"] == run["id"]
    assert again["run"]["revision"] == run["revision"] + 1
    assert len(again["sleeps"]) == 1
    record = again["sleeps"][0]
    assert (record["name"], record["occurrence"], record["status"]) == ("s", 0, "completed")
    assert datetime.fromisoformat(record["wake_at"]) == datetime.fromtimestamp(
        wake_at / 1000, tz=UTC
    )


async def test_event_wait_times_out(harness: Harness) -> None:
    h = harness
    run = await start_and_claim(h)
    timeout_at = iso(h.clock.now + 60_000)
    wait = {"kind": "event", "name": "approval", "occurrence": 0, "timeout_at": timeout_at}
    assert (await suspend(h.client, run, wait))["status"] == "awaiting_event"

    h.advance(59 * SECOND)
    assert await status_after_pass(h, run["id"]) == "awaiting_event"

    h.advance(2 * SECOND)
    await wait_status(h.client, run["id"], "queued")
    detail = await get_run(h.client, run["id"])
    assert [(w["name"], w["status"]) for w in detail["event_waits"]] == [("approval", "timed_out")]
    assert detail["event_waits"][0]["event_id"] is None

    again = await claim_one(h.client, worker_id="worker", capabilities=CAPS)
    assert [w["status"] for w in again["event_waits"]] == ["timed_out"]


async def test_retry_back_off_requeues_when_due(harness: Harness) -> None:
    h = harness
    run = await start_and_claim(h)
    wait = {"kind": "retry", "retry_at": iso(h.clock.now + 30_000)}
    assert (await suspend(h.client, run, wait))["status"] == "awaiting_retry"

    h.advance(29 * SECOND)
    assert await status_after_pass(h, run["id"]) == "awaiting_retry"

    h.advance(2 * SECOND)
    await wait_status(h.client, run["id"], "queued")


async def test_workflow_retry_of_a_failed_run_requeues_when_due(harness: Harness) -> None:
    h = harness
    run = await start_and_claim(h)
    action = {**fail_action(), "retry_at": iso(h.clock.now + 30_000)}
    r = await transition(h.client, run["id"], run["revision"], action)
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "awaiting_retry"
    assert r.json()["run"]["attempt"] == 2

    h.advance(31 * SECOND)
    await wait_status(h.client, run["id"], "queued")
    again = await claim_one(h.client, worker_id="worker", capabilities=CAPS)
    assert again["run"]["attempt"] == 2


# -- due times from durations -----------------------------------------------------------


async def test_durations_are_counted_on_the_servers_clock_once(harness: Harness) -> None:
    h = harness
    run = await start_and_claim(h)
    waits: list[dict[str, Any]] = [
        {"kind": "sleep", "name": "s", "occurrence": 0, "duration": DAY},
        {"kind": "event", "name": "go", "occurrence": 0, "timeout": 2 * DAY},
    ]
    assert (await suspend(h.client, run, *waits))["status"] == "sleeping"
    registered = h.clock.now
    detail = await get_run(h.client, run["id"])
    assert sorted((w["kind"], at(w["due_at"])) for w in detail["waits"]) == [
        ("event", registered + 2 * DAY),
        ("sleep", registered + DAY),
    ]

    # woken half a day later, the run reports its event wait again (and a new sleep)
    h.advance(DAY // 2)
    r = await h.client.post(f"/runs/{run['id']}/wake")
    assert r.status_code == 200, r.text
    again = (await claim_one(h.client, worker_id="worker", capabilities=CAPS))["run"]
    waits[0] = {**waits[0], "name": "t"}  # the woken sleep is over; the code sleeps again
    await suspend(h.client, again, *waits)
    h.advance(DAY // 2 + DAY)
    await wait_status(h.client, run["id"], "queued")
    detail = await get_run(h.client, run["id"])
    # two days after its first report: the timeout kept its due time
    assert [(w["name"], w["status"]) for w in detail["event_waits"]] == [("go", "timed_out")]
    assert {s["name"]: s["status"] for s in detail["sleeps"]} == {"s": "woken", "t": "completed"}


async def test_a_retry_of_a_task_call_is_due_when_its_record_says(harness: Harness) -> None:
    h = harness
    run = await start_and_claim(h)
    failed = task_record(
        run["revision"],
        status="awaiting_retry",
        result=None,
        error={"type": "ConnectionError", "message": "down", "retryable": True},
        retry_delay=60 * SECOND,
    )
    r = await h.client.post(f"/runs/{run['id']}/tasks", json=failed)
    assert r.status_code == 200, r.text
    wait = {"kind": "retry", "address": "charge:1", "occurrence": 0}
    assert (await suspend(h.client, run, wait))["status"] == "awaiting_retry"
    (task,) = (await get_run(h.client, run["id"]))["tasks"]
    assert at(task["next_attempt_at"]) == h.clock.now + 60 * SECOND

    h.advance(59 * SECOND)
    assert await status_after_pass(h, run["id"]) == "awaiting_retry"
    h.advance(SECOND)
    await wait_status(h.client, run["id"], "queued")


async def test_a_retry_of_an_unknown_task_call_is_a_404(harness: Harness) -> None:
    h = harness
    run = await start_and_claim(h)
    wait = {"kind": "retry", "address": "nothing:1", "occurrence": 0}
    r = await transition(h.client, run["id"], run["revision"], {"kind": "suspend", "waits": [wait]})
    assert r.status_code == 404, r.text
    assert (await get_run(h.client, run["id"]))["status"] == "running"


# -- run deadlines -----------------------------------------------------------------------


async def test_run_deadline_fails_the_run_and_fences_its_worker(harness: Harness) -> None:
    h = harness
    run = await start_and_claim(h, timeout=10_000)
    assert datetime.fromisoformat(run["deadline_at"]) == datetime.fromtimestamp(
        (h.clock.now + 10_000) / 1000, tz=UTC
    )

    h.advance(9 * SECOND)
    assert await status_after_pass(h, run["id"]) == "running"

    h.advance(2 * SECOND)
    # it ran: it cleans up first, with the error it will end with
    await wait_status(h.client, run["id"], "cleaning_up")
    detail = await get_run(h.client, run["id"])
    assert "WorkflowTimeoutError" in detail["error"]["type"]
    assert detail["error"]["code"] == "workflow_timeout"
    assert detail["error"]["retryable"] is False
    assert detail["finished_at"] is None
    assert detail["revision"] > run["revision"]

    # the former claimant can write nothing more
    r = await transition(h.client, run["id"], run["revision"], {"kind": "complete", "result": 1})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "stale_revision"
    r = await h.client.post(
        f"/runs/{run['id']}/tasks",
        json={
            "revision": run["revision"],
            "name": "t",
            "address": "t",
            "occurrence": 0,
            "attempt": 1,
            "status": "running",
        },
    )
    assert r.status_code == 409, r.text
    after = await get_run(h.client, run["id"])
    assert after == detail
    directives = await h.client.post(
        "/heartbeats",
        json={"worker_id": "worker", "runs": [{"run_id": run["id"], "revision": run["revision"]}]},
    )
    assert directives.json()["runs"] == [{"run_id": run["id"], "directive": "lost"}]

    # no worker claims the cleanup: its own deadline ends the run anyway
    h.advance(61 * SECOND)
    ended = await wait_status(h.client, run["id"], "failed")
    assert ended["finished_at"] is not None
    history = (await get_run(h.client, run["id"]))["history"]
    assert history[-1]["reason"] == "cleanup deadline passed: ended without its cleanup finished"


async def test_a_cleanup_is_claimed_fenced_and_ended_by_its_worker(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness(claim_idle_timeout=timedelta(seconds=10)) as h:
        await cleanup_claimed_fenced_and_ended(h)


async def cleanup_claimed_fenced_and_ended(h: Harness) -> None:
    run = await start_and_claim(h, timeout=10_000)
    h.advance(11 * SECOND)
    await wait_status(h.client, run["id"], "cleaning_up")

    cleanup = await claim_one(h.client, worker_id="cleaner", capabilities=CAPS)
    assert cleanup["run"]["id"] == run["id"]
    assert cleanup["run"]["status"] == "cleaning_up"
    assert cleanup["cleanup"]["code"] == "workflow_timeout"
    revision = cleanup["run"]["revision"]
    # nothing more to claim: the cleanup is held
    assert (await claim(h.client, worker_id="other", capabilities=CAPS)) == []
    beat = await h.client.post(
        "/heartbeats",
        json={"worker_id": "cleaner", "runs": [{"run_id": run["id"], "revision": revision}]},
    )
    assert beat.json()["runs"] == [{"run_id": run["id"], "directive": "continue"}]
    record = task_record(revision, name="undo", address="undo", status="completed", result=1)
    r = await h.client.post(f"/runs/{run['id']}/tasks", json=record)
    assert r.status_code == 200, r.text

    # its claim goes idle: the cleanup waits for a worker again, still cleaning up
    h.advance(11 * SECOND)
    await timer_pass(h)
    assert (await get_run(h.client, run["id"]))["status"] == "cleaning_up"
    stale = await transition(h.client, run["id"], revision, {"kind": "complete", "result": 1})
    assert stale.status_code == 409, stale.text
    again = await claim_one(h.client, worker_id="cleaner-2", capabilities=CAPS)
    assert [t["name"] for t in again["tasks"]] == ["undo"]

    # whatever the worker reports, the run ends as its cleanup says, with its error
    r = await transition(
        h.client, run["id"], again["run"]["revision"], {"kind": "complete", "result": 1}
    )
    assert r.status_code == 200, r.text
    ended = await get_run(h.client, run["id"])
    assert ended["status"] == "failed"
    assert ended["result"] is None
    assert ended["error"]["code"] == "workflow_timeout"
    assert [(s["to_status"], s["reason"]) for s in ended["history"] if s["entity"] == "run"][
        -5:
    ] == [
        ("cleaning_up", "timed out; cleaning up"),
        ("cleaning_up", "cleanup claimed by cleaner"),
        ("cleaning_up", "claim of cleaner went idle"),
        ("cleaning_up", "cleanup claimed by cleaner-2"),
        ("failed", "cleaned up (complete reported)"),
    ]


async def test_run_deadline_cancels_a_running_child(harness: Harness) -> None:
    h = harness
    parent = await start_and_claim(h, timeout=10_000)
    child = await start_child(h, parent, "c")
    child_claim = await claim_one(h.client, worker_id="child-worker", capabilities=CAPS)
    assert child_claim["run"]["id"] == child["id"]

    h.advance(11 * SECOND)
    await wait_status(h.client, parent["id"], "cleaning_up")
    # its children close by their policies when it ends, after its cleanup
    assert (await get_run(h.client, child["id"]))["status"] == "running"
    cleanup = (await claim_one(h.client, worker_id="worker", capabilities=CAPS))["run"]
    assert cleanup["id"] == parent["id"]
    r = await transition(h.client, parent["id"], cleanup["revision"], {"kind": "complete"})
    assert r.status_code == 200, r.text
    assert (await get_run(h.client, parent["id"]))["status"] == "failed"
    cancelled = await wait_status(h.client, child["id"], "cancelled")
    assert cancelled["finished_at"] is not None
    detail = await get_run(h.client, child["id"])
    assert detail["error"]["code"] == "workflow_cancelled"
    r = await h.client.post(
        "/heartbeats",
        json={
            "worker_id": "child-worker",
            "runs": [{"run_id": child["id"], "revision": child_claim["run"]["revision"]}],
        },
    )
    assert r.json()["runs"] == [{"run_id": child["id"], "directive": "cancel"}]


async def test_deadline_of_a_delayed_run_counts_from_its_start(harness: Harness) -> None:
    h = harness
    run = await start(h.client, delay=60_000, timeout=10_000)
    h.advance(61 * SECOND)
    await wait_status(h.client, run["id"], "queued")
    h.advance(8 * SECOND)
    assert await status_after_pass(h, run["id"]) == "queued"
    h.advance(2 * SECOND)
    await wait_status(h.client, run["id"], "failed")


# -- several waits at once ---------------------------------------------------------------


async def test_sleep_and_event_wait_requeue_on_the_event(harness: Harness) -> None:
    h = harness
    run = await start_and_claim(h)
    waits: list[dict[str, Any]] = [
        {"kind": "sleep", "name": "s", "occurrence": 0, "wake_at": iso(h.clock.now + DAY)},
        {"kind": "event", "name": "go", "occurrence": 0},
    ]
    # a run with a pending sleep says so (and can be woken), whatever else it waits for
    assert (await suspend(h.client, run, *waits))["status"] == "sleeping"

    h.advance(60 * SECOND)
    assert await status_after_pass(h, run["id"]) == "sleeping"
    r = await h.client.post(f"/runs/{run['id']}/events", json={"name": "go", "data": 1})
    assert r.status_code == 200, r.text
    await wait_status(h.client, run["id"], "queued")
    detail = await get_run(h.client, run["id"])
    assert [(w["name"], w["status"]) for w in detail["event_waits"]] == [("go", "received")]
    # no longer awaited until a replay reports it again
    assert [(s["name"], s["status"]) for s in detail["sleeps"]] == [("s", "withdrawn")]

    # the sleep's due time no longer concerns the run: suspended on another event, the
    # day passing does not wake it
    again = (await claim_one(h.client, worker_id="worker", capabilities=CAPS))["run"]
    wait = {"kind": "event", "name": "go", "occurrence": 1}
    assert (await suspend(h.client, again, wait))["status"] == "awaiting_event"
    h.advance(DAY)
    assert await status_after_pass(h, run["id"]) == "awaiting_event"


async def test_sleep_and_event_wait_requeue_on_the_sleep(harness: Harness) -> None:
    h = harness
    run = await start_and_claim(h)
    waits: list[dict[str, Any]] = [
        {"kind": "event", "name": "go", "occurrence": 0},
        {"kind": "sleep", "name": "s", "occurrence": 0, "wake_at": iso(h.clock.now + DAY)},
    ]
    assert (await suspend(h.client, run, *waits))["status"] == "sleeping"

    h.advance(DAY)
    await wait_status(h.client, run["id"], "queued")
    detail = await get_run(h.client, run["id"])
    assert [(s["name"], s["status"]) for s in detail["sleeps"]] == [("s", "completed")]
    assert [(w["name"], w["status"]) for w in detail["event_waits"]] == [("go", "withdrawn")]


async def test_several_waits_take_the_earliest_due_time(harness: Harness) -> None:
    h = harness
    run = await start_and_claim(h)
    waits: list[dict[str, Any]] = [
        {"kind": "sleep", "name": "late", "occurrence": 0, "wake_at": iso(h.clock.now + DAY)},
        {"kind": "retry", "retry_at": iso(h.clock.now + 90 * SECOND)},
        {"kind": "sleep", "name": "early", "occurrence": 0, "wake_at": iso(h.clock.now + 60_000)},
    ]
    assert (await suspend(h.client, run, *waits))["status"] == "sleeping"
    h.advance(61 * SECOND)
    await wait_status(h.client, run["id"], "queued")
    detail = await get_run(h.client, run["id"])
    statuses = {s["name"]: s["status"] for s in detail["sleeps"]}
    assert statuses == {"early": "completed", "late": "withdrawn"}


async def test_child_wait_with_a_sleep_requeues_on_the_sleep(harness: Harness) -> None:
    # "the child, or give up after a minute": the sleep is the child wait's timeout
    h = harness
    parent = await start_and_claim(h)
    child = await start_child(h, parent, "c")
    waits: list[dict[str, Any]] = [
        {"kind": "child", "child_run_id": child["id"]},
        {"kind": "sleep", "name": "timeout", "occurrence": 0, "wake_at": iso(h.clock.now + 60_000)},
    ]
    assert (await suspend(h.client, parent, *waits))["status"] == "awaiting_child"

    h.advance(59 * SECOND)
    assert await status_after_pass(h, parent["id"]) == "awaiting_child"
    h.advance(2 * SECOND)
    await wait_status(h.client, parent["id"], "queued")
    detail = await get_run(h.client, parent["id"])
    assert [(s["name"], s["status"]) for s in detail["sleeps"]] == [("timeout", "completed")]
    assert (await get_run(h.client, child["id"]))["status"] == "queued"


# -- parents and children ----------------------------------------------------------------


async def start_child(h: Harness, parent: dict[str, Any], address: str) -> dict[str, Any]:
    r = await h.client.post(
        f"/runs/{parent['id']}/children",
        json={
            "revision": parent["revision"],
            "address": address,
            "occurrence": 0,
            "workflow": "child",
            "version": "1",
            "input": {"n": 1},
        },
    )
    assert r.status_code == 201, r.text
    child: dict[str, Any] = r.json()["run"]
    assert child["parent_run_id"] == parent["id"]
    assert child["status"] == "queued"
    return child


async def parent_awaiting_child(h: Harness) -> tuple[dict[str, Any], dict[str, Any]]:
    parent = await start_and_claim(h)
    child = await start_child(h, parent, "c")
    waiting = await suspend(h.client, parent, {"kind": "child", "child_run_id": child["id"]})
    assert waiting["status"] == "awaiting_child"
    return parent, child


async def test_parent_is_woken_by_a_failed_child(harness: Harness) -> None:
    h = harness
    parent, child = await parent_awaiting_child(h)
    child_claim = await claim_one(h.client, worker_id="child-worker", capabilities=CAPS)
    assert child_claim["run"]["id"] == child["id"]
    h.advance(SECOND)
    assert await status_after_pass(h, parent["id"]) == "awaiting_child"

    r = await transition(
        h.client,
        child_claim["run"]["id"],
        child_claim["run"]["revision"],
        fail_action("child broke"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "failed"
    await wait_status(h.client, parent["id"], "queued")

    again = await claim_one(h.client, worker_id="worker", capabilities=CAPS)
    assert again["run"]["id"] == parent["id"]
    assert [(c["run_id"], c["status"]) for c in again["children"]] == [(child["id"], "failed")]


async def test_parent_is_woken_by_a_cancelled_child(harness: Harness) -> None:
    h = harness
    parent, child = await parent_awaiting_child(h)
    r = await h.client.post(f"/runs/{child['id']}/cancel", json={"reason": "not needed"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    await wait_status(h.client, parent["id"], "queued")
    detail = await get_run(h.client, parent["id"])
    assert f"child {child['id']}" in detail["history"][-1]["reason"]

    again = await claim_one(h.client, worker_id="worker", capabilities=CAPS)
    assert [(c["run_id"], c["status"]) for c in again["children"]] == [(child["id"], "cancelled")]


async def test_child_that_already_ended_does_not_suspend_its_parent(harness: Harness) -> None:
    h = harness
    parent = await start_and_claim(h)
    child = await start_child(h, parent, "c")
    assert (await h.client.post(f"/runs/{child['id']}/cancel")).status_code == 200
    waiting = await suspend(h.client, parent, {"kind": "child", "child_run_id": child["id"]})
    assert waiting["status"] == "queued"


# -- batches -----------------------------------------------------------------------------


async def test_timer_daemon_moves_due_runs_in_repeated_batches(harness: Harness) -> None:
    h = harness
    count = 450  # the daemon's batch is 200: all of them need three passes
    wake_at = iso(h.clock.now + DAY)

    async def start_some(n: int) -> None:
        for _ in range(n):
            await start(h.client)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(start_some, count // 10)
    claimed = await claim(h.client, worker_id="worker", capabilities=CAPS, max_runs=1000)
    assert len(claimed) == count

    async def suspend_some(runs: list[dict[str, Any]]) -> None:
        for c in runs:
            sleep = {"kind": "sleep", "name": "s", "occurrence": 0, "wake_at": wake_at}
            assert (await suspend(h.client, c["run"], sleep))["status"] == "sleeping"

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(suspend_some, claimed[i::10])

    h.advance(DAY)
    with anyio.fail_after(15):
        while True:
            r = await h.client.get("/runs", params={"status": "queued", "limit": 500})
            assert r.status_code == 200, r.text
            if len(r.json()["runs"]) == count:
                break
            await anyio.sleep(0.02)
    r = await h.client.get("/runs", params={"status": "sleeping", "limit": 500})
    assert r.json()["runs"] == []


async def test_a_pass_returns_only_once_every_row_due_at_its_start_is_handled(
    harness: Harness,
) -> None:
    """A pass started while another (the daemon's own) holds the due rows waits for it,
    rather than skipping the rows it holds and returning before they have moved."""
    h = harness
    timers = h.app.state.timers
    runs = [await start(h.client, delay=60_000) for _ in range(5)]
    holding = anyio.Event()

    async def slow(handle: Any, tx: Any, row: Any, now: int) -> None:
        holding.set()
        await anyio.sleep(0.3)  # the rows stay locked meanwhile
        await handle(tx, row, now)

    timers._kinds = tuple(
        dataclasses.replace(kind, handle=functools.partial(slow, kind.handle))
        for kind in timers._kinds
    )
    h.clock.advance(61 * SECOND)  # not `h.advance`: no wake-up, the test runs the passes
    async with anyio.create_task_group() as tg:
        tg.start_soon(timer_pass, h)
        await holding.wait()
        await timer_pass(h)
        assert [(await get_run(h.client, run["id"]))["status"] for run in runs] == ["queued"] * len(
            runs
        )


# -- one bad row never stops the daemon ---------------------------------------------------


async def test_a_delayed_run_past_its_deadline_fails_and_every_other_due_run_moves(
    harness: Harness,
) -> None:
    h = harness
    runs = [(await start(h.client, delay=SECOND))["id"] for _ in range(200)]
    # beyond the first batch of wake-ups, and past its deadline (start + timeout) too
    late = (await start(h.client, delay=2 * SECOND, timeout=SECOND))["id"]

    h.advance(10 * SECOND)

    failed = await wait_status(h.client, late, "failed")
    assert failed["error"]["code"] == "workflow_timeout"
    with anyio.fail_after(15):
        while True:
            r = await h.client.get("/runs", params={"status": "queued", "limit": 500})
            if {run["id"] for run in r.json()["runs"]} == set(runs):
                break
            await anyio.sleep(0.02)
    moves = [(m["from_status"], m["to_status"]) for m in (await get_run(h.client, late))["history"]]
    assert moves == [(None, "scheduled"), ("scheduled", "failed")]


async def test_a_child_ended_by_its_own_deadline_is_not_ended_again_by_its_parents(
    harness: Harness,
) -> None:
    h = harness
    parent = await start_and_claim(h, timeout=10 * SECOND)
    h.clock.advance(SECOND)
    r = await h.client.post(
        f"/runs/{parent['id']}/children",
        json={
            "revision": parent["revision"],
            "address": "c",
            "occurrence": 0,
            "workflow": "child",
            "version": "1",
            "timeout": 10 * SECOND,
        },
    )
    child = r.json()["run"]
    # both deadlines pass: the parent's, first, starts its cleanup (its children close
    # when it ends); the child's own, met in the same pass, ends the child; the
    # parent's cleanup deadline, in a later pass, must not end the child a second time
    h.advance(20 * SECOND)
    await wait_status(h.client, parent["id"], "cleaning_up")  # it ran: it cleans up first
    await wait_status(h.client, child["id"], "failed")
    h.advance(61 * SECOND)  # past the parent's cleanup deadline
    await wait_status(h.client, parent["id"], "failed")
    await timer_pass(h)  # a pass that looks once more finds nothing due

    detail = await get_run(h.client, child["id"])
    assert detail["status"] == "failed"
    assert detail["error"]["code"] == "workflow_timeout"
    ends = [m for m in detail["history"] if m["to_status"] in ("completed", "failed", "cancelled")]
    assert [(m["from_status"], m["to_status"]) for m in ends] == [("queued", "failed")]


async def refuse_status_changes(db: Database, run_id: str) -> None:
    """Make every status change of one run fail in the database itself (a trigger)."""
    async with db.transaction() as tx:
        if db.dialect == "sqlite":
            await tx.execute(
                "CREATE TRIGGER refuse BEFORE UPDATE OF status ON runs"
                f" WHEN OLD.id = '{run_id}' BEGIN SELECT RAISE(ABORT, 'row refused'); END"
            )
            return
        await tx.execute(
            "CREATE FUNCTION refuse() RETURNS trigger AS $$"
            " BEGIN RAISE EXCEPTION 'row refused'; END $$ LANGUAGE plpgsql"
        )
        await tx.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE OF status ON runs FOR EACH ROW"
            f" WHEN (OLD.id = '{run_id}') EXECUTE FUNCTION refuse()"
        )


async def set_aside(h: Harness) -> int:
    """How many rows `/health` says the timer daemon set aside."""
    count: int = (await h.client.get("http://aiki/health")).json()["timers"]["set_aside"]
    return count


async def test_a_row_that_always_fails_is_set_aside_and_shown(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    h = harness
    db = h.app.state.db
    bad_run, *good_runs = [(await start(h.client, delay=SECOND))["id"] for _ in range(3)]
    await refuse_status_changes(db, bad_run)
    schedule = await create_schedule(h.client, every=None, cron="* * * * *")
    async with db.transaction() as tx:  # its stored definition no longer makes sense
        await tx.execute(
            "UPDATE schedules SET timezone = 'Nowhere/Atlantis' WHERE id = $1", schedule["id"]
        )

    h.clock.advance(60 * SECOND)
    # the app's own daemon passes too; on PostgreSQL a pass skips the rows another
    # one holds, so count the failures, not the passes
    with anyio.fail_after(10):
        while (await get_run(h.client, bad_run))["timer_failures"] < SET_ASIDE_AFTER or (
            await get_schedule(h.client, schedule["id"])
        )["timer_failures"] < SET_ASIDE_AFTER:
            await timer_pass(h)

    for run_id in good_runs:
        assert (await get_run(h.client, run_id))["status"] == "queued"
    stuck = await get_run(h.client, bad_run)
    assert stuck["status"] == "scheduled"
    assert stuck["timer_failures"] == SET_ASIDE_AFTER
    assert "row refused" in stuck["timer_error"]["message"]
    bad_schedule = await get_schedule(h.client, schedule["id"])
    assert bad_schedule["timer_failures"] == SET_ASIDE_AFTER
    assert "Nowhere/Atlantis" in bad_schedule["timer_error"]["message"]
    assert bad_schedule["next_fire_at"] == schedule["next_fire_at"]
    with anyio.fail_after(5):  # counted once the pass that set them aside committed
        while await set_aside(h) != 2:  # noqa: ASYNC110 - no event says a pass counted
            await anyio.sleep(0.02)

    # the log says which run, with its ids
    ids = f'run_id="{bad_run}" workflow="w" version="1" namespace="default"'
    lines = [line for line in capsys.readouterr().err.splitlines() if "set aside" in line]
    assert any(" wake-up failed 5 times in a row" in line and ids in line for line in lines)

    # set aside: later passes leave both alone
    await timer_pass(h)
    assert (await get_run(h.client, bad_run))["timer_failures"] == SET_ASIDE_AFTER
    assert (await get_schedule(h.client, schedule["id"]))["timer_failures"] == SET_ASIDE_AFTER
    # the run moves otherwise (an operator cancels it): its failures are forgotten
    async with db.transaction() as tx:
        await tx.execute("DROP TRIGGER refuse" + (" ON runs" if db.dialect != "sqlite" else ""))
    r = await h.client.post(f"/runs/{bad_run}/cancel")
    assert r.json()["status"] == "cancelled"
    cancelled = await get_run(h.client, bad_run)
    assert (cancelled["timer_failures"], cancelled["timer_error"]) == (0, None)
