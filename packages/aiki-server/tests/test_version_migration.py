"""Moving runs to another version (`POST /migrations`) one page at a time.

A migration moves at most `limit` runs and says whether more are left (`has_more`): runs
it cannot move (running, say) must neither take those places nor hide the runs left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server_api import claim, start

if TYPE_CHECKING:
    from server_api import Harness


async def migrate(h: Harness, **fields: Any) -> dict[str, Any]:
    """Migrate runs of `w` from version 1 to 2; the answer, which must be a 200."""
    body = {"workflow": "w", "from_version": "1", "to_version": "2", **fields}
    r = await h.client.post("/migrations", json=body)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def test_runs_that_cannot_move_take_no_place_in_a_page(harness: Harness) -> None:
    h = harness
    await claim(h.client, version="2", worker_id="worker-2")  # version 2 is known
    runs = [await start(h.client, input=n) for n in range(4)]
    running = await claim(h.client, max_runs=2)  # the two oldest run on a worker
    assert {r["run"]["id"] for r in running} == {runs[0]["id"], runs[1]["id"]}

    first = await migrate(h, limit=1)
    assert [r["id"] for r in first["migrated"]] == [runs[2]["id"]]
    assert first["has_more"] is True  # one queued run is still on version 1
    assert {s["run_id"] for s in first["skipped"]} == {runs[0]["id"], runs[1]["id"]}

    second = await migrate(h, limit=1)
    assert [r["id"] for r in second["migrated"]] == [runs[3]["id"]]
    assert second["has_more"] is False


async def test_runs_named_by_id_move_a_page_at_a_time(harness: Harness) -> None:
    h = harness
    await claim(h.client, version="2", worker_id="worker-2")
    ids = [(await start(h.client, input=n))["id"] for n in range(4)]

    first = await migrate(h, filter={"run_ids": ids}, limit=2)
    assert [r["id"] for r in first["migrated"]] == ids[:2]
    assert first["has_more"] is True
    rest = await migrate(h, filter={"run_ids": ids[2:]}, limit=2)
    assert [r["id"] for r in rest["migrated"]] == ids[2:]
    assert rest["has_more"] is False


async def test_a_run_cleaning_up_is_skipped_as_such(harness: Harness) -> None:
    h = harness
    await claim(h.client, version="2", worker_id="worker-2")
    run = await start(h.client)
    await claim(h.client)
    r = await h.client.post(f"/runs/{run['id']}/cancel", json={})
    assert r.json()["status"] == "cleaning_up"

    answer = await migrate(h)
    assert answer["migrated"] == []
    [skipped] = answer["skipped"]
    assert skipped["status"] == "cleaning_up"
    assert "cleaning up" in skipped["reason"]
