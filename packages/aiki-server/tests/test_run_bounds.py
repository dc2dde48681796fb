"""Bounds on what one run may grow to: payload sizes, events, and webhook deliveries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from ulid import ULID

from aiki_server import ServerSettings
from server_api import claim_one, error_of, get_run, start, task_record, transition

if TYPE_CHECKING:
    import httpx

    from server_api import HarnessFactory

LIMIT = 1000
BIG = "é" * 600  # 600 characters, 1,202 bytes of JSON: over the limit by its bytes


async def held(client: httpx.AsyncClient) -> tuple[str, int]:
    run = await start(client)
    claimed = await claim_one(client)
    return run["id"], claimed["run"]["revision"]


def too_large(r: httpx.Response, field: str) -> None:
    details = error_of(r, 413, "payload_too_large")
    assert (details["field"], details["limit"]) == (field, LIMIT)
    assert details["size"] > LIMIT


async def test_each_payload_over_the_limit_is_refused_and_nothing_written(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness(max_payload_bytes=LIMIT) as h:
        r = await h.client.post("/runs", json={"workflow": "w", "version": "1", "input": BIG})
        too_large(r, "input")
        assert (await h.client.get("/runs")).json()["runs"] == []

        run_id, revision = await held(h.client)
        before = await get_run(h.client, run_id)
        r = await h.client.post(f"/runs/{run_id}/tasks", json=task_record(revision, result=BIG))
        too_large(r, "result")
        r = await h.client.post(f"/runs/{run_id}/tasks", json=task_record(revision, input=BIG))
        too_large(r, "input")
        r = await h.client.post(f"/runs/{run_id}/events", json={"name": "e", "data": BIG})
        too_large(r, "data")
        r = await h.client.post(
            f"/runs/{run_id}/children",
            json={
                "revision": revision,
                "address": "child:1",
                "occurrence": 0,
                "workflow": "child",
                "version": "1",
                "input": BIG,
            },
        )
        too_large(r, "input")
        # a transition carrying a good task record and a result too large: none of it
        r = await h.client.post(
            f"/runs/{run_id}/transition",
            json={
                "revision": revision,
                "tasks": [task_record(revision)],
                "action": {"kind": "complete", "result": BIG},
            },
        )
        too_large(r, "result")
        r = await transition(
            h.client, run_id, revision, {"kind": "continue", "input": BIG, "run_id": str(ULID())}
        )
        too_large(r, "input")
        after = await get_run(h.client, run_id)
        for key in ("status", "revision", "tasks", "events", "children", "history"):
            assert after[key] == before[key], key

        r = await transition(h.client, run_id, revision, {"kind": "complete", "result": "é" * 10})
        assert r.status_code == 200, r.text


async def test_a_run_holds_at_most_its_events(make_harness: HarnessFactory) -> None:
    async with make_harness(max_events_per_run=3) as h:
        run_id, _ = await held(h.client)
        for n in range(3):
            r = await h.client.post(
                f"/runs/{run_id}/events", json={"name": "e", "data": n, "reference_id": f"r{n}"}
            )
            assert r.status_code == 200, r.text
        r = await h.client.post(f"/runs/{run_id}/events", json={"name": "e", "data": 3})
        details = error_of(r, 409, "run_record_limit_exceeded")
        assert details == {"run_id": run_id, "kind": "events", "limit": 3}
        # a repeat of a stored event is still answered as the duplicate it is
        r = await h.client.post(
            f"/runs/{run_id}/events", json={"name": "e", "data": 0, "reference_id": "r0"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["duplicate"] is True
        assert len((await get_run(h.client, run_id))["events"]) == 3


async def webhook_url(client: httpx.AsyncClient, run_id: str, revision: int) -> str:
    r = await client.post(
        f"/runs/{run_id}/webhooks",
        json={"revision": revision, "event": "paid", "expires_in": 3_600_000, "schema": {}},
    )
    assert r.status_code == 201, r.text
    path: str = r.json()["path"]
    return "http://aiki" + path


async def test_a_webhook_url_cannot_grow_its_run_without_end(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness(max_events_per_run=2, webhook_rate_limit=100) as h:
        run_id, revision = await held(h.client)
        url = await webhook_url(h.client, run_id, revision)
        first = await h.client.post(url, json={"n": 1}, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 200, first.text
        again = await h.client.post(url, json={"n": 1}, headers={"Idempotency-Key": "k1"})
        assert again.json() == {"event_id": first.json()["event_id"], "duplicate": True}
        r = await h.client.post(url, json={"n": 2}, headers={"Idempotency-Key": "k2"})
        assert r.status_code == 200, r.text
        r = await h.client.post(url, json={"n": 3}, headers={"Idempotency-Key": "k3"})
        error_of(r, 409, "run_record_limit_exceeded")
        r = await h.client.post(url, json={"n": 4})
        error_of(r, 409, "run_record_limit_exceeded")
        assert len((await get_run(h.client, run_id))["events"]) == 2


async def test_a_webhook_url_delivers_at_its_rate(make_harness: HarnessFactory) -> None:
    async with make_harness(webhook_rate_limit=2) as h:
        run_id, revision = await held(h.client)
        url = await webhook_url(h.client, run_id, revision)
        other = await webhook_url(h.client, run_id, revision)
        for n in range(2):  # a burst of the minute's deliveries
            r = await h.client.post(url, json={"n": n})
            assert r.status_code == 200, r.text
        r = await h.client.post(url, json={"n": 2})
        details = error_of(r, 429, "too_many_requests")
        assert details["retry_after"] == pytest.approx(30, abs=0.01)
        assert r.headers["retry-after"] == "30"
        assert (await h.client.post(other, json={})).status_code == 200  # its own bucket
        h.advance(30_000)  # one delivery refilled
        assert (await h.client.post(url, json={"n": 3})).status_code == 200
        assert (await h.client.post(url, json={"n": 4})).status_code == 429
        assert len((await get_run(h.client, run_id))["events"]) == 4


@pytest.mark.parametrize(
    ("setting", "value"),
    [("max_payload_bytes", 0), ("max_events_per_run", 0), ("webhook_rate_limit", 0)],
)
def test_bounds_must_be_positive(setting: str, value: Any) -> None:
    with pytest.raises(ValueError, match=setting):
        ServerSettings(**{setting: value})


async def test_a_run_at_its_history_bound_fails_at_its_workers_next_write(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness(max_history_per_run=6) as h:
        run_id, revision = await held(h.client)
        accepted = 0
        for n in range(10):
            body = task_record(revision, address=f"charge:{n}")
            r = await h.client.post(f"/runs/{run_id}/tasks", json=body)
            if r.status_code != 200:
                break
            accepted += 1
        details = error_of(r, 409, "run_record_limit_exceeded")
        assert (details["kind"], details["limit"]) == ("history", 6)
        run = await get_run(h.client, run_id)
        assert run["status"] == "failed"
        assert run["error"]["type"] == "aiki_core.RunRecordLimitError"
        assert len(run["tasks"]) == accepted < 6  # the refused record wrote nothing
        r = await transition(h.client, run_id, revision, {"kind": "complete"})
        assert r.status_code == 409  # the worker's claim is gone with the run


async def cancelled_into_cleanup(client: httpx.AsyncClient, run_id: str) -> int:
    """Cancel the run that ran, and claim its cleanup; the cleanup's revision."""
    r = await client.post(f"/runs/{run_id}/cancel", json={"reason": "enough"})
    assert r.json()["status"] == "cleaning_up", r.text
    cleanup = await claim_one(client)
    assert cleanup["run"]["id"] == run_id
    revision: int = cleanup["run"]["revision"]
    return revision


async def test_a_cancel_that_reaches_the_history_bound_still_lets_the_run_clean_up(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness(max_history_per_run=6) as h:
        run_id, revision = await held(h.client)  # its claim: 1 of 6
        for n in range(4):  # 5 of 6
            body = task_record(revision, address=f"charge:{n}")
            assert (await h.client.post(f"/runs/{run_id}/tasks", json=body)).status_code == 200
        cleanup = await cancelled_into_cleanup(h.client, run_id)  # 6 of 6

        # its cleanup code runs a compensation, and reports: the run ends as cancelled
        body = task_record(cleanup, name="refund", address="refund:1")
        assert (await h.client.post(f"/runs/{run_id}/tasks", json=body)).status_code == 200
        r = await transition(h.client, run_id, cleanup, {"kind": "complete"})
        assert r.status_code == 200, r.text
        run = await get_run(h.client, run_id)
        assert run["status"] == "cancelled"
        assert run["error"]["code"] == "workflow_cancelled"
        assert "refund" in {task["name"] for task in run["tasks"]}


async def test_a_cleanup_over_the_task_limit_ends_the_run_as_its_cleanup_would(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness(max_tasks_per_run=2) as h:
        run_id, revision = await held(h.client)
        for n in range(2):
            body = task_record(revision, address=f"charge:{n}")
            assert (await h.client.post(f"/runs/{run_id}/tasks", json=body)).status_code == 200
        cleanup = await cancelled_into_cleanup(h.client, run_id)

        body = task_record(cleanup, name="refund", address="refund:1")
        r = await h.client.post(f"/runs/{run_id}/tasks", json=body)
        error_of(r, 409, "run_limit_exceeded")
        # not left cleaning up until its deadline: it ends at once, cancelled as it was
        run = await get_run(h.client, run_id)
        assert run["status"] == "cancelled"
        assert run["error"]["code"] == "workflow_cancelled"
        assert len(run["tasks"]) == 2  # the refused record wrote nothing


async def test_a_schedules_input_over_the_limit_is_refused_and_nothing_written(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness(max_payload_bytes=LIMIT) as h:
        body = {"name": "big", "workflow": "w", "version": "1", "every": 10_000, "input": BIG}
        too_large(await h.client.post("/schedules", json=body), "input")
        assert (await h.client.get("/schedules")).json()["schedules"] == []

        body["input"] = "small"
        r = await h.client.post("/schedules", json=body)
        assert r.status_code == 201, r.text
        schedule = r.json()
        # each run it starts would carry that input past the bound
        r = await h.client.patch(f"/schedules/{schedule['id']}", json={"input": BIG})
        too_large(r, "input")
        assert (await h.client.get(f"/schedules/{schedule['id']}")).json() == schedule


async def test_abandonment_notes_are_held_to_the_history_bound(
    make_harness: HarnessFactory,
) -> None:
    """A note of an abandoned task is a history row like any: past the bound it is refused
    (the run is left as it is), so no caller can grow a run's history without end."""
    async with make_harness(max_history_per_run=6) as h:
        run_id, revision = await held(h.client)  # its claim: 1 of 6
        r = await transition(h.client, run_id, revision, {"kind": "complete"})  # 2 of 6
        assert r.status_code == 200, r.text
        body = {"revision": revision, "task_name": "t", "attempt": 1, "grace": 1000}
        answers = [
            await h.client.post(f"/runs/{run_id}/abandoned-tasks", json=body) for _ in range(6)
        ]
        assert [r.status_code for r in answers] == [200] * 4 + [409] * 2
        details = error_of(answers[-1], 409, "run_record_limit_exceeded")
        assert (details["kind"], details["limit"]) == ("history", 6)
        run = await get_run(h.client, run_id)
        assert run["status"] == "completed"
        assert sum("abandoned" in (e["reason"] or "") for e in run["history"]) == 4
