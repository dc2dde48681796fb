"""The directives long-poll: a worker learns at once that a run it holds was stopped."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio

from server_api import (
    app_client,
    claim,
    claim_one,
    client_with,
    error_of,
    new_key,
    start,
    timer_pass,
    transition,
    until_waiting,
)

if TYPE_CHECKING:
    import httpx

    from server_api import Harness, HarnessFactory

GUARD = 10
"""Seconds a test waits at most for a poll that should answer (the poll waits 30 s)."""


async def held(client: httpx.AsyncClient, worker_id: str = "worker-1") -> tuple[str, int]:
    """A run started and claimed by `worker_id`: its id and the claim's revision."""
    run = await start(client)
    claimed = await claim_one(client, worker_id=worker_id)
    assert claimed["run"]["id"] == run["id"]
    return run["id"], claimed["run"]["revision"]


async def poll(
    client: httpx.AsyncClient,
    runs: list[dict[str, Any]],
    *,
    wait_ms: int = 30_000,
    worker_id: str = "worker-1",
) -> list[dict[str, Any]]:
    """One directives poll; the directives that changed."""
    r = await client.post(
        "/directives", json={"worker_id": worker_id, "runs": runs, "wait": wait_ms}
    )
    assert r.status_code == 200, r.text
    answers: list[dict[str, Any]] = r.json()["runs"]
    return answers


def lease(run_id: str, revision: int, *, pausing: bool = False) -> dict[str, Any]:
    return {"run_id": run_id, "revision": revision, "pausing": pausing}


async def answered_after(
    client: httpx.AsyncClient, runs: list[dict[str, Any]], change: Any
) -> list[dict[str, Any]]:
    """Open a 30 s poll, make `change()` once it is open, and return the poll's answer."""
    answers: list[dict[str, Any]] = []

    async def polling() -> None:
        answers.extend(await poll(client, runs))

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(polling)
            await anyio.sleep(0.2)  # the poll is open and waiting
            await change()
    return answers


async def test_a_cancel_answers_the_open_poll(server: httpx.AsyncClient) -> None:
    run_id, revision = await held(server)
    other_id, other_revision = await held(server)

    async def cancel() -> None:
        assert (await server.post(f"/runs/{run_id}/cancel", json={})).status_code == 200

    runs = [lease(run_id, revision), lease(other_id, other_revision)]
    answers = await answered_after(server, runs, cancel)

    assert answers == [{"run_id": run_id, "directive": "cancel"}]  # the other run goes on


async def test_a_pause_answers_once_and_its_withdrawal_answers_continue(
    server: httpx.AsyncClient,
) -> None:
    run_id, revision = await held(server)

    async def pause() -> None:
        assert (await server.post(f"/runs/{run_id}/pause")).status_code == 200

    assert await answered_after(server, [lease(run_id, revision)], pause) == [
        {"run_id": run_id, "directive": "pause"}
    ]
    # a worker that follows the pause is not told again
    assert await poll(server, [lease(run_id, revision, pausing=True)], wait_ms=0) == []

    async def resume() -> None:
        assert (await server.post(f"/runs/{run_id}/resume")).status_code == 200

    assert await answered_after(server, [lease(run_id, revision, pausing=True)], resume) == [
        {"run_id": run_id, "directive": "continue"}
    ]


async def test_a_stale_claim_or_an_unknown_run_is_lost(server: httpx.AsyncClient) -> None:
    run_id, revision = await held(server)
    runs = [lease(run_id, revision + 1), lease("01J00000000000000000000000", 1)]

    answers = await poll(server, runs, wait_ms=0)

    assert [a["directive"] for a in answers] == ["lost", "lost"]
    # another worker's claim is lost to this one
    assert await poll(server, [lease(run_id, revision)], wait_ms=0, worker_id="other") == [
        {"run_id": run_id, "directive": "lost"}
    ]
    # a poll that times out with nothing to say answers nothing
    assert await poll(server, [lease(run_id, revision)], wait_ms=0) == []


async def test_a_poll_sees_only_its_namespace(db_url: str) -> None:
    async with app_client(db_url) as (app, _):
        ours, theirs = await new_key(app, "ours"), await new_key(app, "theirs")
        async with client_with(app, ours.key) as client, client_with(app, theirs.key) as them:
            run_id, revision = await held(client)
            # another namespace cannot see the run: to its worker it is lost
            assert await poll(them, [lease(run_id, revision)], wait_ms=0) == [
                {"run_id": run_id, "directive": "lost"}
            ]

            async def cancel() -> None:
                assert (await client.post(f"/runs/{run_id}/cancel", json={})).status_code == 200

            answers = await answered_after(client, [lease(run_id, revision)], cancel)
            assert answers == [{"run_id": run_id, "directive": "cancel"}]
        async with client_with(app, None) as anonymous:
            r = await anonymous.post("/directives", json={"worker_id": "w", "runs": [], "wait": 0})
            error_of(r, 401, "unauthenticated")


async def test_a_cancel_on_one_replica_answers_a_poll_on_another(
    server: httpx.AsyncClient, second_app: httpx.AsyncClient
) -> None:
    run_id, revision = await held(server)

    async def cancel() -> None:
        assert (await server.post(f"/runs/{run_id}/cancel", json={})).status_code == 200

    answers = await answered_after(second_app, [lease(run_id, revision)], cancel)

    assert answers == [{"run_id": run_id, "directive": "cancel"}]


async def test_an_abandoned_task_is_noted_in_the_run_history(server: httpx.AsyncClient) -> None:
    run_id, revision = await held(server)
    assert (await server.post(f"/runs/{run_id}/cancel", json={})).status_code == 200
    body = {"worker_id": "worker-1", "revision": revision, "task_name": "t", "attempt": 2}

    r = await server.post(f"/runs/{run_id}/abandoned-tasks", json={**body, "grace": 10_000})

    assert r.status_code == 200, r.text
    history = (await server.get(f"/runs/{run_id}")).json()["history"]
    assert history[-1]["reason"] == (
        "task 't' attempt 2 abandoned: its thread ignored cancellation and still ran"
        " 10 s later on worker worker-1"
    )
    assert history[-1]["to_status"] == "cleaning_up"  # cancelled after it ran: cleaning up
    # a revision the run never had is refused, and writes nothing
    r = await server.post(
        f"/runs/{run_id}/abandoned-tasks", json={**body, "revision": 99, "grace": 1000}
    )
    error_of(r, 409, "stale_revision")
    assert len((await server.get(f"/runs/{run_id}")).json()["history"]) == len(history)


async def test_a_dry_run_on_one_replica_is_answered_by_a_worker_on_another(
    server: httpx.AsyncClient, second_app: httpx.AsyncClient
) -> None:
    await claim(server, version="2", worker_id="worker-2")  # serves version 2, holds nothing
    run_id, revision = await held(server)
    nap = {"kind": "sleep", "name": "nap", "occurrence": 0, "wake_at": "2100-01-01T00:00:00Z"}
    r = await transition(server, run_id, revision, {"kind": "suspend", "waits": [nap]})
    assert r.status_code == 200, r.text
    body = {"workflow": "w", "from_version": "1", "to_version": "2", "dry_run": True}
    answers: list[httpx.Response] = []

    async def dry_run() -> None:  # on the first replica
        answers.append(await server.post("/migrations", json={**body, "wait": 20_000}))

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(dry_run)
            # the worker's idle poll and its report go to the second replica
            idle = {"worker_id": "worker-2", "runs": [], "wait": 20_000, "max_dry_runs": 10}
            [job] = (await second_app.post("/directives", json=idle)).json()["dry_runs"]
            report = {
                "run_id": run_id,
                "version": "2",
                "outcome": "waits",
                "stopped_at": "the run would wait (sleep), every call before on record",
            }
            answer = {"worker_id": "worker-2", "report": report}
            r = await second_app.post(f"/dry-runs/{job['job_id']}/report", json=answer)
            assert r.status_code == 200, r.text

    [answered] = answers
    assert answered.status_code == 200, answered.text
    assert [d["run_id"] for d in answered.json()["dry_runs"]] == [run_id]


async def test_a_cleanup_whose_claim_went_idle_answers_its_workers_poll(
    make_harness: HarnessFactory,
) -> None:
    """A claimed cleanup handed back to the queue (its claim went idle) is taken from
    the worker that held it: its open poll answers then, not at its next heartbeat."""
    async with make_harness(claim_idle_timeout=timedelta(seconds=10)) as h:
        await _idle_cleanup_answers(h)


async def _idle_cleanup_answers(h: Harness) -> None:
    worker = f"worker-{uuid.uuid4().hex}"  # its own: on PostgreSQL, other servers NOTIFY
    run_id, revision = await held(h.client, worker)
    assert (await h.client.post(f"/runs/{run_id}/cancel", json={})).status_code == 200
    cleanup = await claim_one(h.client, worker_id=worker)
    assert cleanup["run"]["status"] == "cleaning_up"
    assert cleanup["run"]["revision"] > revision
    answers: list[dict[str, Any]] = []

    async def polling() -> None:
        runs = [lease(run_id, cleanup["run"]["revision"])]
        answers.extend(await poll(h.client, runs, worker_id=worker))

    idle = h.app.state.hub.waiting
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(polling)
            await until_waiting(h, idle + 1)
            h.clock.advance(10_001)  # wakes no poll: the release alone may
            await timer_pass(h)
    assert answers == [{"run_id": run_id, "directive": "cancel"}]
    assert h.app.state.hub.wakeups["worker"] == 1
