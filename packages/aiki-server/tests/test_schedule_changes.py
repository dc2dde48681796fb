"""Schedules changed in place, caught up after downtime by their policy, and backfilled.

Under the manual clock, on SQLite and on PostgreSQL (the `db_url` fixture is parametrized).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from server_api import START_MS, create_schedule, error_of, get_run, get_schedule, iso
from test_schedules import HOUR, MINUTE, SECOND, _matches, ref, tick

if TYPE_CHECKING:
    import httpx

    from server_api import Harness


async def update(
    client: httpx.AsyncClient, schedule_id: str, status: int = 200, **fields: Any
) -> dict[str, Any]:
    r = await client.patch(f"/schedules/{schedule_id}", json=fields)
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


async def backfill(
    client: httpx.AsyncClient, schedule_id: str, start: int, end: int, status: int = 200
) -> dict[str, Any]:
    r = await client.post(
        f"/schedules/{schedule_id}/backfill", json={"start": iso(start), "end": iso(end)}
    )
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


# -- update in place ----------------------------------------------------------------------


async def test_update_changes_the_schedule_in_place_and_keeps_its_runs(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client, input={"n": 1})
    [first] = await tick(h, 10 * SECOND)
    changed = await update(
        h.client, schedule["id"], every=MINUTE, input={"n": 2}, timeout=HOUR, overlap="allow"
    )
    assert (changed["id"], changed["name"]) == (schedule["id"], schedule["name"])
    assert (changed["every"], changed["input"], changed["timeout"]) == (MINUTE, {"n": 2}, HOUR)
    assert changed["overlap"] == "allow"  # the first run still going does not stop the next
    assert changed["last_run_id"] == first["id"]
    # the new cadence goes on from the next of its occurrences after now (the anchor's grid)
    assert _matches(changed["next_fire_at"], START_MS + MINUTE)
    assert await tick(h, 49 * SECOND) == [first]
    runs = await tick(h, 1 * SECOND)
    assert [r["reference_id"] for r in runs] == [
        first["reference_id"],
        ref(schedule, START_MS + MINUTE),
    ]
    new = await get_run(h.client, runs[-1]["id"])
    assert new["input"] == {"n": 2}
    assert new["schedule_id"] == schedule["id"]
    # the updated timeout applies to the runs it starts from now on
    assert new["deadline_at"] == iso(START_MS + MINUTE + HOUR)
    assert (await get_run(h.client, first["id"]))["deadline_at"] is None
    r = await h.client.get("/runs", params={"workflow": "w"})
    assert {run["schedule_id"] for run in r.json()["runs"]} == {schedule["id"]}


async def test_update_to_cron_clears_every_and_a_null_clears_the_timeout(
    harness: Harness,
) -> None:
    h = harness
    schedule = await create_schedule(h.client, timeout=HOUR)
    changed = await update(h.client, schedule["id"], cron="*/5 * * * *", timeout=None)
    assert (changed["cron"], changed["every"], changed["timeout"]) == ("*/5 * * * *", None, None)
    assert _matches(changed["next_fire_at"], START_MS + 5 * MINUTE)
    # fields left out keep their values
    again = await update(h.client, schedule["id"], overlap="allow")
    assert (again["cron"], again["timezone"], again["overlap"]) == ("*/5 * * * *", "UTC", "allow")
    assert again["next_fire_at"] == changed["next_fire_at"]


async def test_update_pauses_and_resumes(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client)
    assert (await update(h.client, schedule["id"], paused=True))["paused"] is True
    assert await tick(h, 10 * MINUTE) == []
    resumed = await update(h.client, schedule["id"], paused=False)
    assert resumed["paused"] is False
    # nothing missed while paused: on from the next occurrence
    assert _matches(resumed["next_fire_at"], START_MS + 610 * SECOND)


async def test_the_updated_definition_is_what_create_finds_again(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client)
    await update(h.client, schedule["id"], every=MINUTE)
    await create_schedule(h.client, status=409)
    same = await create_schedule(h.client, every=MINUTE, status=200)
    assert same["id"] == schedule["id"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "0 0 1 1 *", "every": MINUTE}, "body"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "0 0 * * * *"}, "cron"),  # six fields: the first would be seconds
        ({"every": 10}, "every"),
        ({"catch_up": "some"}, "catch_up"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"paused": 0}, "paused"),
    ],
)
async def test_an_invalid_update_is_422_and_changes_nothing(
    harness: Harness, fields: dict[str, Any], field: str
) -> None:
    h = harness
    schedule = await create_schedule(h.client)
    r = await h.client.patch(f"/schedules/{schedule['id']}", json=fields)
    error_of(r, 422, "payload_validation")
    assert field in r.json()["error"]["message"]
    assert await get_schedule(h.client, schedule["id"]) == schedule


async def test_update_of_an_unknown_schedule_is_404(harness: Harness) -> None:
    r = await harness.client.patch("/schedules/01J00000000000000000000000", json={"paused": True})
    error_of(r, 404, "not_found")


# -- catch-up after downtime ----------------------------------------------------------------


async def test_catch_up_latest_starts_only_the_most_recent_missed_occurrence(
    harness: Harness,
) -> None:
    h = harness
    schedule = await create_schedule(h.client, overlap="allow")
    assert schedule["catch_up"] == "latest"
    runs = await tick(h, 5 * MINUTE + 5 * SECOND)
    assert [r["reference_id"] for r in runs] == [ref(schedule, START_MS + 5 * MINUTE)]


async def test_catch_up_all_starts_every_missed_occurrence_in_its_window(
    harness: Harness,
) -> None:
    h = harness
    schedule = await create_schedule(
        h.client, overlap="allow", catch_up="all", catch_up_window=MINUTE
    )
    assert (schedule["catch_up"], schedule["catch_up_window"]) == ("all", MINUTE)
    runs = await tick(h, 5 * MINUTE + 5 * SECOND)
    # the last minute's occurrences, oldest first; the older ones are past the window
    assert [r["reference_id"] for r in runs] == [
        ref(schedule, START_MS + k * 10 * SECOND) for k in range(25, 31)
    ]
    after = await get_schedule(h.client, schedule["id"])
    assert _matches(after["next_fire_at"], START_MS + 310 * SECOND)


async def test_catch_up_all_starts_a_long_backlog_over_several_passes(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client, every=SECOND, overlap="allow", catch_up="all")
    runs = await tick(h, 250 * SECOND)  # the daemon goes on until none is due
    assert [r["reference_id"] for r in runs] == [
        ref(schedule, START_MS + k * SECOND) for k in range(1, 251)
    ]


async def test_catch_up_all_goes_through_the_overlap_policy(harness: Harness) -> None:
    h = harness
    await create_schedule(h.client, catch_up="all")  # overlap: skip
    runs = await tick(h, 5 * MINUTE + 5 * SECOND)
    assert len(runs) == 1  # the others found it still going


async def test_catch_up_none_skips_missed_occurrences(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client, every=10 * MINUTE, overlap="allow", catch_up="none")
    assert await tick(h, 32 * MINUTE) == []  # the latest, at 30 min, is 2 min late: missed
    after = await get_schedule(h.client, schedule["id"])
    assert _matches(after["next_fire_at"], START_MS + 40 * MINUTE)
    runs = await tick(h, 8 * MINUTE + 30 * SECOND)  # on time, within a minute
    assert [r["reference_id"] for r in runs] == [ref(schedule, START_MS + 40 * MINUTE)]


# -- backfill ---------------------------------------------------------------------------


async def test_backfill_starts_each_occurrence_once(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client, every=MINUTE, overlap="skip")
    await update(h.client, schedule["id"], paused=True)  # backfill does not need it firing
    h.clock.advance(HOUR)
    answer = await backfill(h.client, schedule["id"], START_MS, START_MS + 5 * MINUTE)
    assert answer["started"] == 5  # [start, end): minutes 0 (its creation) to 4
    runs = [await get_run(h.client, run_id) for run_id in answer["run_ids"]]
    assert [r["reference_id"] for r in runs] == [
        ref(schedule, START_MS + k * MINUTE) for k in range(5)
    ]
    assert {r["schedule_id"] for r in runs} == {schedule["id"]}
    again = await backfill(h.client, schedule["id"], START_MS, START_MS + 7 * MINUTE)
    assert again["started"] == 2
    assert again["run_ids"][:5] == answer["run_ids"]
    r = await h.client.get("/runs", params={"workflow": "w"})
    assert len(r.json()["runs"]) == 7


async def test_backfill_leaves_future_occurrences_to_the_schedule(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client, cron="0 * * * *", every=None, overlap="allow")
    h.clock.advance(3 * HOUR + 1)
    answer = await backfill(h.client, schedule["id"], START_MS - 2 * HOUR, START_MS + 10 * HOUR)
    runs = [await get_run(h.client, run_id) for run_id in answer["run_ids"]]
    # START_MS is on the hour: the hours from two before it to the last before now
    assert [r["reference_id"] for r in runs] == [
        ref(schedule, START_MS + k * HOUR) for k in range(-2, 4)
    ]
    # firing finds the occurrence a backfill started, and does not start it again
    fired = await tick(h, 0)
    assert len(fired) == 6


async def test_a_too_long_backfill_is_409_and_a_reversed_one_empty(
    harness: Harness,
) -> None:
    h = harness
    schedule = await create_schedule(h.client, every=SECOND)
    await update(h.client, schedule["id"], paused=True)
    h.clock.advance(HOUR)
    # a valid body: the schedule's cadence (each second) makes the span too long
    body = await backfill(h.client, schedule["id"], START_MS, START_MS + HOUR, status=409)
    assert body["error"]["details"] == {"schedule_id": schedule["id"], "max_occurrences": 1000}
    assert await backfill(h.client, schedule["id"], START_MS + MINUTE, START_MS) == {
        "run_ids": [],
        "started": 0,
    }
    r = await h.client.get("/runs", params={"workflow": "w"})
    assert r.json()["runs"] == []


async def test_a_backfill_from_the_first_moments_of_the_calendar(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client, cron="0 * * * *", every=None, timezone="Asia/Tokyo")
    r = await h.client.post(
        f"/schedules/{schedule['id']}/backfill",
        json={"start": "0001-01-01T00:00:00Z", "end": "0001-01-02T00:00:00Z"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"run_ids": [], "started": 0}
