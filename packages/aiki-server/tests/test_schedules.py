"""Schedules: the API (create, list, read, pause, resume, delete, validation, conflicts)
and firing under the manual clock (occurrences and their reference ids, overlap
policies, pauses, catch-up after a gap, the runs' deadlines); cron times across DST
changes.

Every test runs on SQLite and on PostgreSQL (the `db_url` fixture is parametrized).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from aiki_server._schedules import Cadence
from server_api import (
    START_MS,
    claim_one,
    create_schedule,
    error_of,
    get_run,
    get_schedule,
    iso,
    timer_pass,
    transition,
    wait_status,
)

if TYPE_CHECKING:
    import httpx

    from server_api import Harness

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE


def _matches(actual: str | None, ms: int) -> bool:
    """Whether an ISO timestamp of the API is the moment `ms`."""
    return actual is not None and actual.replace("+00:00", "Z") == iso(ms)


async def control(client: httpx.AsyncClient, schedule_id: str, action: str) -> dict[str, Any]:
    r = await client.post(f"/schedules/{schedule_id}/{action}")
    assert r.status_code == 200, r.text
    schedule: dict[str, Any] = r.json()
    return schedule


async def runs_of(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every run of workflow `w`, oldest first."""
    r = await client.get("/runs", params={"workflow": "w", "limit": 500})
    assert r.status_code == 200, r.text
    runs: list[dict[str, Any]] = r.json()["runs"]
    return runs[::-1]


async def tick(h: Harness, ms: int) -> list[dict[str, Any]]:
    """Move the clock, run a timer pass, wait until no schedule is due; every run of `w` then.

    The app's own daemon may be firing a schedule at the same moment (on PostgreSQL
    the pass here then skips its locked row): so wait for the due ones to be fired.
    """
    h.clock.advance(ms)
    await timer_pass(h)
    with anyio.fail_after(5):
        while await _any_due(h):  # noqa: ASYNC110 - the state is in the database, no event
            await anyio.sleep(0.01)
    return await runs_of(h.client)


async def _any_due(h: Harness) -> bool:
    r = await h.client.get("/schedules", params={"limit": 500})
    now = datetime.fromtimestamp(h.clock.now / 1000, tz=UTC)
    return any(
        not s["paused"]
        and s["next_fire_at"] is not None
        and datetime.fromisoformat(s["next_fire_at"]) <= now
        for s in r.json()["schedules"]
    )


def ref(schedule: dict[str, Any], at_ms: int) -> str:
    return f"schedule:{schedule['id']}:{at_ms}"


# -- the API ---------------------------------------------------------------------------


async def test_create_get_and_idempotent_create(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client, input={"n": 1}, overlap="allow", pool="p")
    assert schedule["name"] == "nightly"
    assert schedule["namespace"] == "default"
    assert (schedule["workflow"], schedule["version"], schedule["pool"]) == ("w", "1", "p")
    assert schedule["input"] == {"n": 1}
    assert schedule["overlap"] == "allow"
    assert schedule["paused"] is False
    assert schedule["last_run_id"] is None
    assert _matches(schedule["next_fire_at"], START_MS + 10 * SECOND)
    assert await get_schedule(h.client, schedule["id"]) == schedule

    again = await create_schedule(h.client, input={"n": 1}, overlap="allow", pool="p", status=200)
    assert again == schedule
    r = await h.client.post(
        "/schedules",
        json={"name": "nightly", "workflow": "w", "version": "1", "every": 10 * SECOND},
    )
    details = error_of(r, 409, "conflict")
    assert details["schedule_id"] == schedule["id"]
    # another name is another schedule
    other = await create_schedule(h.client, "hourly", input={"n": 1})
    assert other["id"] != schedule["id"]


async def test_a_timeout_is_stored_and_part_of_the_definition(harness: Harness) -> None:
    h = harness
    timed = await create_schedule(h.client, timeout=HOUR)
    assert timed["timeout"] == HOUR
    assert await get_schedule(h.client, timed["id"]) == timed
    assert await create_schedule(h.client, timeout=HOUR, status=200) == timed
    for other in ({"timeout": 2 * HOUR}, {}):  # another timeout, or none, is another definition
        r = await h.client.post(
            "/schedules",
            json={"name": "nightly", "workflow": "w", "version": "1", "every": 10_000, **other},
        )
        assert error_of(r, 409, "conflict")["schedule_id"] == timed["id"]
    untimed = await create_schedule(h.client, "hourly")
    assert untimed["timeout"] is None
    r = await h.client.get("/schedules")
    assert [s["timeout"] for s in r.json()["schedules"]] == [None, HOUR]


async def test_list_is_newest_first_and_keyset_paginated(harness: Harness) -> None:
    h = harness
    ids = []
    for i in range(5):
        ids.append((await create_schedule(h.client, f"s-{i}"))["id"])
        h.clock.advance(1)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = await h.client.get("/schedules", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        pages += 1
        seen += [s["id"] for s in page["schedules"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert pages == 3
    error_of(await h.client.get("/schedules", params={"cursor": "nope"}), 422, "payload_validation")
    error_of(await h.client.get("/schedules", params={"limit": 0}), 422, "payload_validation")


async def test_pause_resume_and_delete(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client)
    paused = await control(h.client, schedule["id"], "pause")
    assert paused["paused"] is True
    assert (await control(h.client, schedule["id"], "pause"))["paused"] is True  # idempotent
    h.clock.advance(25 * SECOND)
    resumed = await control(h.client, schedule["id"], "resume")
    assert resumed["paused"] is False
    # from the first occurrence after now, on the schedule's grid
    assert _matches(resumed["next_fire_at"], START_MS + 30 * SECOND)

    r = await h.client.delete(f"/schedules/{schedule['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == schedule["id"]
    for r in (
        await h.client.get(f"/schedules/{schedule['id']}"),
        await h.client.delete(f"/schedules/{schedule['id']}"),
        await h.client.post(f"/schedules/{schedule['id']}/pause"),
        await h.client.post(f"/schedules/{schedule['id']}/resume"),
    ):
        assert error_of(r, 404, "not_found")["resource"] == "schedule"
    # the name is free again
    await create_schedule(h.client)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "61 * * * *", "every": None}, "cron"),
        ({"cron": "* * *", "every": None}, "cron"),
        ({"cron": "* * * * * *", "every": None}, "cron"),  # six: every second
        ({"cron": "0 0 30 2 *", "every": None}, "cron"),  # February 30th never comes
        ({"cron": "0 * * * *"}, "body"),  # both cron and every
        ({"every": None}, "body"),  # neither
        ({"every": 500}, "body"),  # under a second
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"overlap": "sometimes"}, "overlap"),
        ({"name": ""}, "name"),
        ({"timeout": -1}, "timeout"),
    ],
)
async def test_invalid_schedules_are_422_naming_the_field(
    harness: Harness, fields: dict[str, Any], field: str
) -> None:
    h = harness
    body = {"name": "bad", "workflow": "w", "version": "1", "every": 10 * SECOND, **fields}
    details = error_of(await h.client.post("/schedules", json=body), 422, "payload_validation")
    assert any(field in problem["loc"] for problem in details["errors"]), details
    r = await h.client.get("/schedules")
    assert r.json()["schedules"] == []


async def test_cron_next_fire_time_follows_the_timezone(harness: Harness) -> None:
    h = harness  # the clock starts at 08:00 UTC, 09:00 in Paris (winter)
    utc = await create_schedule(h.client, "utc", cron="30 9 * * *", every=None)
    paris = await create_schedule(
        h.client, "paris", cron="30 9 * * *", every=None, timezone="Europe/Paris"
    )
    assert _matches(utc["next_fire_at"], START_MS + 90 * MINUTE)
    assert _matches(paris["next_fire_at"], START_MS + 30 * MINUTE)


# -- firing ----------------------------------------------------------------------------


async def test_every_schedule_fires_each_occurrence_with_its_reference_id(
    harness: Harness,
) -> None:
    h = harness
    schedule = await create_schedule(h.client, input={"n": 7}, overlap="allow", pool="p")
    assert await tick(h, 9 * SECOND) == []
    runs = await tick(h, 1 * SECOND)
    assert [r["reference_id"] for r in runs] == [ref(schedule, START_MS + 10 * SECOND)]
    assert runs[0]["status"] == "queued"
    assert runs[0]["pool"] == "p"
    assert (await get_run(h.client, runs[0]["id"]))["input"] == {"n": 7}
    await tick(h, 10 * SECOND)
    runs = await tick(h, 10 * SECOND)
    assert [r["reference_id"] for r in runs] == [
        ref(schedule, START_MS + k * 10 * SECOND) for k in (1, 2, 3)
    ]
    assert await tick(h, 0) == runs  # a pass at the same time starts nothing again
    now = await get_schedule(h.client, schedule["id"])
    assert now["last_run_id"] == runs[-1]["id"]
    assert _matches(now["next_fire_at"], START_MS + 40 * SECOND)


async def test_cron_schedule_fires_at_its_minute(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client, cron="*/5 * * * *", every=None)
    assert await tick(h, 5 * MINUTE - 1) == []
    runs = await tick(h, 1)
    assert [r["reference_id"] for r in runs] == [ref(schedule, START_MS + 5 * MINUTE)]
    assert _matches(
        (await get_schedule(h.client, schedule["id"]))["next_fire_at"], START_MS + 10 * MINUTE
    )


async def test_skip_starts_nothing_while_the_previous_run_is_going(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client)  # overlap: skip
    first = await tick(h, 10 * SECOND)
    assert len(first) == 1
    assert await tick(h, 10 * SECOND) == first  # still queued: skipped
    skipped = await get_schedule(h.client, schedule["id"])
    assert _matches(skipped["next_fire_at"], START_MS + 30 * SECOND)  # but advanced

    claimed = await claim_one(h.client)
    running = await tick(h, 10 * SECOND)  # running: skipped too
    assert [(r["id"], r["status"]) for r in running] == [(first[0]["id"], "running")]
    r = await transition(
        h.client, claimed["run"]["id"], claimed["run"]["revision"], {"kind": "complete"}
    )
    assert r.status_code == 200, r.text
    runs = await tick(h, 10 * SECOND)
    assert [r["reference_id"] for r in runs] == [
        ref(schedule, START_MS + 10 * SECOND),
        ref(schedule, START_MS + 40 * SECOND),
    ]


async def test_skip_follows_a_run_that_continued_as_new(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client)  # overlap: skip
    (first,) = await tick(h, 10 * SECOND)
    claimed = await claim_one(h.client)
    follow_on = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    action = {"kind": "continue", "run_id": follow_on, "input": {"n": 2}}
    r = await transition(h.client, first["id"], claimed["run"]["revision"], action)
    assert r.status_code == 200, r.text

    # the first run completed, but the schedule's work goes on in its continuation
    runs = await tick(h, 10 * SECOND)
    assert {r["id"]: r["status"] for r in runs} == {
        first["id"]: "completed",
        follow_on: "queued",
    }
    assert (await get_run(h.client, follow_on))["schedule_id"] == schedule["id"]
    assert (await get_schedule(h.client, schedule["id"]))["last_run_id"] == follow_on


async def test_allow_starts_beside_the_previous_run(harness: Harness) -> None:
    h = harness
    await create_schedule(h.client, overlap="allow")
    await tick(h, 10 * SECOND)
    await claim_one(h.client)
    runs = await tick(h, 10 * SECOND)
    assert [r["status"] for r in runs] == ["running", "queued"]


async def test_cancel_previous_cancels_it_then_starts(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client, overlap="cancel_previous")
    await tick(h, 10 * SECOND)
    await claim_one(h.client)
    runs = await tick(h, 10 * SECOND)
    # it cleans up first, and the new run is held until it has ended
    assert [r["status"] for r in runs] == ["cleaning_up", "scheduled"]
    assert (await get_schedule(h.client, schedule["id"]))["last_run_id"] == runs[1]["id"]
    cleanup = await claim_one(h.client)
    assert cleanup["run"]["id"] == runs[0]["id"]
    r = await transition(h.client, runs[0]["id"], cleanup["run"]["revision"], {"kind": "complete"})
    assert r.status_code == 200, r.text
    cancelled = await get_run(h.client, runs[0]["id"])
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"]["code"] == "workflow_cancelled"
    assert "nightly" in cancelled["error"]["message"]
    assert (await get_run(h.client, runs[1]["id"]))["status"] == "queued"


async def test_cancel_previous_starts_the_held_run_at_the_cleanups_deadline(
    harness: Harness,
) -> None:
    h = harness
    schedule = await create_schedule(h.client, overlap="cancel_previous")
    await tick(h, 10 * SECOND)
    await claim_one(h.client)
    runs = await tick(h, 10 * SECOND)
    assert [r["status"] for r in runs] == ["cleaning_up", "scheduled"]
    await control(h.client, schedule["id"], "pause")  # no further occurrence meanwhile
    # no worker cleans it up: its deadline (60 s by default) ends it, and the held run goes
    h.advance(MINUTE)  # the app's timer daemon looks at once (the pass may be its own)
    await timer_pass(h)
    await wait_status(h.client, runs[0]["id"], "cancelled")
    await wait_status(h.client, runs[1]["id"], "queued")


async def test_each_run_gets_the_schedules_timeout_as_its_deadline(harness: Harness) -> None:
    h = harness
    timed = await create_schedule(h.client, "timed", timeout=MINUTE)
    untimed = await create_schedule(h.client, "untimed")
    runs = {r["reference_id"]: r for r in await tick(h, 10 * SECOND)}
    first = START_MS + 10 * SECOND
    overrun = await get_run(h.client, runs[ref(timed, first)]["id"])
    assert overrun["deadline_at"] == iso(first + MINUTE)  # from its start, like a start by hand
    free = await get_run(h.client, runs[ref(untimed, first)]["id"])
    assert free["deadline_at"] is None

    h.advance(MINUTE)
    await wait_status(h.client, overrun["id"], "failed")
    assert (await get_run(h.client, overrun["id"]))["error"]["code"] == "workflow_timeout"
    await timer_pass(h)
    assert (await get_run(h.client, free["id"]))["status"] == "queued"


async def test_a_paused_schedule_fires_nothing(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client, overlap="allow")
    await control(h.client, schedule["id"], "pause")
    assert await tick(h, 10 * MINUTE) == []
    await control(h.client, schedule["id"], "resume")
    assert await tick(h, 9 * SECOND) == []
    runs = await tick(h, 1 * SECOND)
    assert [r["reference_id"] for r in runs] == [ref(schedule, START_MS + 610 * SECOND)]


async def test_after_a_long_gap_only_the_latest_occurrence_fires(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client, overlap="allow")
    runs = await tick(h, 60 * MINUTE + 5 * SECOND)
    assert [r["reference_id"] for r in runs] == [ref(schedule, START_MS + 60 * MINUTE)]
    after = await get_schedule(h.client, schedule["id"])
    assert _matches(after["next_fire_at"], START_MS + 60 * MINUTE + 10 * SECOND)


async def test_an_occurrence_taken_by_hand_does_not_stop_the_timers(harness: Harness) -> None:
    h = harness
    taken = await create_schedule(h.client, "taken")
    other = await create_schedule(h.client, "other")
    by_hand = await h.client.post(
        "/runs",
        json={
            "workflow": "w",
            "version": "1",
            "input": "another payload",
            "reference_id": ref(taken, START_MS + 10 * SECOND),
        },
    )
    assert by_hand.status_code == 201, by_hand.text
    runs = await tick(h, 10 * SECOND)
    assert sorted(r["reference_id"] for r in runs) == sorted(
        [ref(taken, START_MS + 10 * SECOND), ref(other, START_MS + 10 * SECOND)]
    )
    after = await get_schedule(h.client, taken["id"])
    assert after["last_run_id"] == by_hand.json()["run"]["id"]
    assert _matches(after["next_fire_at"], START_MS + 20 * SECOND)


async def test_the_daemon_fires_a_schedule_on_its_own(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(h.client)
    h.advance(10 * SECOND)  # wakes the daemon; no explicit pass
    with anyio.fail_after(5):
        while not (runs := await runs_of(h.client)):  # noqa: ASYNC110 - see `tick`
            await anyio.sleep(0.01)
    assert [r["reference_id"] for r in runs] == [ref(schedule, START_MS + 10 * SECOND)]


def _utc_ms(year: int, month: int, day: int, hour: int, minute: int = 0) -> int:
    return round(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


def test_cron_times_follow_vixie_cron_across_daylight_saving_changes() -> None:
    # 02:30 in Paris: skipped in spring (runs at 03:00 CEST), doubled in autumn (runs once)
    cadence = Cadence("30 2 * * *", None, "Europe/Paris", anchor=0)
    spring = cadence.next_after(_utc_ms(2027, 3, 27, 12))
    assert spring == _utc_ms(2027, 3, 28, 1)
    assert cadence.next_after(spring) == _utc_ms(2027, 3, 29, 0, 30)
    autumn = cadence.next_after(_utc_ms(2027, 10, 30, 12))
    assert autumn == _utc_ms(2027, 10, 31, 0, 30)
    assert cadence.next_after(autumn) == _utc_ms(2027, 11, 1, 1, 30)
    assert cadence.latest(_utc_ms(2027, 11, 1, 1, 31), since=autumn) == _utc_ms(2027, 11, 1, 1, 30)


# 02:45 in Paris on 31 October 2027 is 00:45 UTC (summer time); from 01:00 UTC the clocks
# show 02:00 to 03:00 again (winter time), and cronsim, read from there, answers 00:45 UTC
AUTUMN_0245 = _utc_ms(2027, 10, 31, 0, 45)
SECOND_0230 = _utc_ms(2027, 10, 31, 1, 30)


def test_cron_times_read_in_the_hour_autumn_repeats_are_after_it() -> None:
    cadence = Cadence("45 2 * * *", None, "Europe/Paris", anchor=0)
    assert cadence.next_after(SECOND_0230) == _utc_ms(2027, 11, 1, 1, 45)
    # the latest is that day's 02:45 of summer time, not the day before's
    assert cadence.latest(SECOND_0230, since=_utc_ms(2027, 10, 1, 0, 45)) == AUTUMN_0245
    # an occurrence before the span is none of its own
    assert cadence.between(SECOND_0230, _utc_ms(2027, 10, 31, 2), 10) == []


async def test_a_schedule_fired_in_the_hour_autumn_repeats_waits_for_its_next_day(
    harness: Harness,
) -> None:
    h = harness
    schedule = await create_schedule(
        h.client, cron="45 2 * * *", every=None, timezone="Europe/Paris"
    )
    # the server comes back in the repeated hour: the 02:45 of summer time fires, once, and
    # the next is the next day's (its next fire time went back to 00:45 UTC: due again at
    # once, the daemon fired it pass after pass without a pause until 01:45)
    runs = await tick(h, SECOND_0230 - START_MS)
    assert [r["reference_id"] for r in runs] == [ref(schedule, AUTUMN_0245)]
    after = await get_schedule(h.client, schedule["id"])
    assert _matches(after["next_fire_at"], _utc_ms(2027, 11, 1, 1, 45))
    # created in that hour, a schedule's first occurrence is not one of the hour before
    other = await create_schedule(
        h.client, "other", cron="45 2 * * *", every=None, timezone="Europe/Paris"
    )
    assert _matches(other["next_fire_at"], _utc_ms(2027, 11, 1, 1, 45))


# at 03:00 in the Chatham Islands on 4 April 2027, 45 minutes before their clocks go back
# to 02:45, cronsim's reverse read of `* 2 * * *` answers the 02:59 still to come
CHATHAM_0300 = _utc_ms(2027, 4, 3, 13, 15)
CHATHAM_0259 = _utc_ms(2027, 4, 3, 13, 14)


def test_the_latest_cron_time_is_never_after_now() -> None:
    cadence = Cadence("* 2 * * *", None, "Pacific/Chatham", anchor=0)
    assert cadence.latest(CHATHAM_0300, since=CHATHAM_0300 - 2 * HOUR) == CHATHAM_0259


async def test_a_late_schedule_starts_no_occurrence_still_to_come(harness: Harness) -> None:
    h = harness
    schedule = await create_schedule(
        h.client, cron="* 2 * * *", every=None, timezone="Pacific/Chatham"
    )
    runs = await tick(h, CHATHAM_0300 - START_MS)
    assert [r["reference_id"] for r in runs] == [ref(schedule, CHATHAM_0259)]
