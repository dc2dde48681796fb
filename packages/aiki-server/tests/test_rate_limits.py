"""Rate limits: the API (define, read, list, change, delete, acquire), bad input, and
the guarantee: no window of `per` sees more than `limit` units granted to one key.

The guarantee is checked on the grant times the server answers, under the manual clock
with random request sizes and random gaps, and on PostgreSQL across two replicas
asking at once. Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from server_api import error_of, get_run, start, timer_pass

if TYPE_CHECKING:
    import httpx

    from server_api import Harness


def to_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


async def define(client: httpx.AsyncClient, name: str, limit: int, per_ms: int) -> dict[str, Any]:
    r = await client.put(f"/rate-limits/{name}", json={"limit": limit, "per": per_ms})
    assert r.status_code == 200, r.text
    info: dict[str, Any] = r.json()
    return info


async def acquire(
    client: httpx.AsyncClient, name: str, units: int = 1, key: str = ""
) -> dict[str, Any]:
    r = await client.post(f"/rate-limits/{name}/acquire", json={"units": units, "key": key})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def busiest_window(grants: list[tuple[int, int]], per_ms: int) -> int:
    """The most units granted in any window [t, t + per_ms) (each starting at a grant)."""
    grants = sorted(grants)
    return max(sum(u for t, u in grants if start <= t < start + per_ms) for start, _ in grants)


async def test_define_read_list_change_delete(server: httpx.AsyncClient) -> None:
    created = await define(server, "openai", 60, 60_000)
    assert {k: created[k] for k in ("namespace", "name", "limit", "per")} == {
        "namespace": "default",
        "name": "openai",
        "limit": 60,
        "per": 60_000,
    }
    await define(server, "mail", 5, 1_000)
    changed = await define(server, "openai", 100, 30_000)
    assert (changed["limit"], changed["per"]) == (100, 30_000)

    r = await server.get("/rate-limits/openai")
    assert r.status_code == 200 and r.json()["limit"] == 100
    r = await server.get("/rate-limits")
    assert [x["name"] for x in r.json()["rate_limits"]] == ["mail", "openai"]

    r = await server.delete("/rate-limits/openai")
    assert r.status_code == 200 and r.json()["name"] == "openai"
    details = error_of(await server.get("/rate-limits/openai"), 404, "rate_limit_not_found")
    assert details["name"] == "openai"
    error_of(await server.delete("/rate-limits/openai"), 404, "rate_limit_not_found")
    r = await server.get("/rate-limits")
    assert [x["name"] for x in r.json()["rate_limits"]] == ["mail"]


@pytest.mark.parametrize(
    "body",
    [
        {"limit": 0, "per": 1000},
        {"limit": -1, "per": 1000},
        {"limit": 10, "per": 0},
        {"limit": 10, "per": -5},
        {"limit": 1.5, "per": 1000},
        {"limit": 10},
        {"per": 1000},
    ],
)
async def test_a_limit_or_period_that_is_not_positive_is_refused(
    server: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    error_of(await server.put("/rate-limits/x", json=body), 422, "payload_validation")
    error_of(await server.get("/rate-limits/x"), 404, "rate_limit_not_found")


async def test_bad_acquisitions_are_refused_and_take_nothing(harness: Harness) -> None:
    client = harness.client
    details = error_of(
        await client.post("/rate-limits/nope/acquire", json={"units": 1}),
        404,
        "rate_limit_not_found",
    )
    assert details == {"resource": "rate limit", "resource_id": "nope", "name": "nope"}
    await define(client, "api", 3, 1_000)
    details = error_of(
        await client.post("/rate-limits/api/acquire", json={"units": 4, "key": "k"}),
        409,
        "conflict",
    )
    assert details == {"rate_limit": "api", "units": 4, "limit": 3}
    for bad in ({"units": 0}, {"units": -1}, {"key": "k" * 201}, {"key": "a\x00b"}):
        r = await client.post("/rate-limits/api/acquire", json=bad)
        error_of(r, 422, "payload_validation")
    async with harness.app.state.db.reader() as tx:
        assert await tx.fetch("SELECT * FROM rate_limit_buckets") == []
    assert (await acquire(client, "api", units=3, key="k"))["granted"]  # all still there


async def test_units_are_spaced_and_a_refusal_says_when_and_takes_nothing(
    harness: Harness,
) -> None:
    client, clock = harness.client, harness.clock
    await define(client, "api", 2, 1_000)  # one unit per 500 ms
    first = await acquire(client, "api")
    assert first["granted"] and to_ms(first["granted_at"]) == clock.now
    start = clock.now
    for _ in range(3):  # asking again and again takes nothing
        refused = await acquire(client, "api")
        assert refused == {
            "granted": False,
            "granted_at": None,
            "retry_at": refused["retry_at"],
            "retry_after": 500,
        }
        assert to_ms(refused["retry_at"]) == start + 500
    harness.advance(499)
    assert (await acquire(client, "api"))["retry_after"] == 1
    harness.advance(1)
    assert (await acquire(client, "api"))["granted"]
    # a request for both units waits until the unit before it is free too
    harness.advance(500)
    both = await acquire(client, "api", units=2)
    assert not both["granted"] and both["retry_after"] == 500
    harness.advance(500)
    assert (await acquire(client, "api", units=2))["granted"]


async def test_each_key_has_the_whole_budget(harness: Harness) -> None:
    client = harness.client
    await define(client, "per-user", 3, 60_000)
    for key in ("u1", "u2"):
        assert (await acquire(client, "per-user", units=3, key=key))["granted"]
    for key in ("u1", "u2", ""):
        answer = await acquire(client, "per-user", key=key)
        assert answer["granted"] is (key == ""), answer


async def test_deleting_a_limit_deletes_its_buckets(harness: Harness) -> None:
    client = harness.client
    await define(client, "api", 1, 60_000)
    assert (await acquire(client, "api", key="k"))["granted"]
    assert (await client.delete("/rate-limits/api")).status_code == 200
    async with harness.app.state.db.reader() as tx:
        assert await tx.fetch("SELECT * FROM rate_limit_buckets") == []
    await define(client, "api", 1, 60_000)
    assert (await acquire(client, "api", key="k"))["granted"]  # a fresh budget


@pytest.mark.parametrize("seed", range(5))
async def test_no_window_sees_more_than_the_limit(harness: Harness, seed: int) -> None:
    """Random request sizes at random times: the grants never crowd a window."""
    rng = random.Random(seed)
    client = harness.client
    limit, per_ms = rng.choice([(10, 1_000), (3, 1_000), (7, 60_000), (60, 1_000)])
    await define(client, "api", limit, per_ms)
    grants: list[tuple[int, int]] = []
    for _ in range(300):
        units = rng.choice([1, 1, 1, rng.randint(1, limit)])
        answer = await acquire(client, "api", units=units)
        if answer["granted"]:
            grants.append((to_ms(answer["granted_at"]), units))
        elif rng.random() < 0.5:
            harness.advance(answer["retry_after"])  # ask again when told: granted then
            answer = await acquire(client, "api", units=units)
            assert answer["granted"], answer
            grants.append((to_ms(answer["granted_at"]), units))
        harness.advance(rng.randint(0, per_ms // max(limit // 2, 1)))
    assert len(grants) > 100
    assert busiest_window(grants, per_ms) <= limit
    # one unit at a time is exact spacing: a full window somewhere, when asked often
    singles = [(t, u) for t, u in grants if u == 1]
    gaps = [b - a for (a, _), (b, _) in zip(singles, singles[1:], strict=False)]
    assert min(gaps) >= per_ms // limit


async def test_replicas_asking_at_once_never_crowd_a_window(
    server: httpx.AsyncClient, second_app: httpx.AsyncClient
) -> None:
    """Two replicas of one PostgreSQL database, 4 askers each, the wall clock."""
    await define(server, "shared", 10, 1_000)
    grants: list[tuple[int, int]] = []

    async def asker(client: httpx.AsyncClient, n: int) -> None:
        while n:
            answer = await acquire(client, "shared", key="k")
            if answer["granted"]:
                grants.append((to_ms(answer["granted_at"]), 1))
                n -= 1
            else:
                await anyio.sleep(answer["retry_after"] / 1000)

    async with anyio.create_task_group() as tg:
        for client in (server, second_app):
            for _ in range(4):
                tg.start_soon(asker, client, 4)
    assert len(grants) == 32
    assert busiest_window(grants, 1_000) <= 10


# -- starts that take units --------------------------------------------------------------------


async def test_a_start_reserves_its_units_and_is_scheduled_for_them(harness: Harness) -> None:
    client, clock = harness.client, harness.clock
    await define(client, "starts", 1, 60_000)
    t0 = clock.now
    use = {"name": "starts", "key": "acme"}
    first = await start(client, rate_limit=use)
    second = await start(client, rate_limit=use)
    third = await start(client, rate_limit=use)
    other_key = await start(client, rate_limit={"name": "starts", "key": "globex"})
    assert first["status"] == other_key["status"] == "queued"
    assert [r["status"] for r in (second, third)] == ["scheduled", "scheduled"]
    assert [to_ms(r["start_at"]) for r in (second, third)] == [t0 + 60_000, t0 + 120_000]
    detail = await get_run(client, second["id"])
    assert detail["history"][0]["reason"] == (
        "started; waiting for rate limit starts (key acme) until "
        + datetime.fromisoformat(second["start_at"]).isoformat()
    )
    # the reservations count: a task asking now waits behind them
    refused = await acquire(client, "starts", key="acme")
    assert to_ms(refused["retry_at"]) == t0 + 180_000
    # a start found by its reference id takes nothing
    once = await start(client, rate_limit=use, reference_id="order-1")
    again = {"workflow": "w", "version": "1", "rate_limit": use, "reference_id": "order-1"}
    r = await client.post("/runs", json=again)
    assert r.status_code == 200 and r.json()["run"]["id"] == once["id"]
    assert to_ms(once["start_at"]) == t0 + 180_000
    assert to_ms((await acquire(client, "starts", key="acme"))["retry_at"]) == t0 + 240_000

    clock.advance(60_000)  # without waking the timer daemon: this test's pass does the work
    await timer_pass(harness)
    assert (await get_run(client, second["id"]))["status"] == "queued"
    assert (await get_run(client, third["id"]))["status"] == "scheduled"


async def test_a_bad_rate_limit_on_a_start_starts_nothing(harness: Harness) -> None:
    client = harness.client
    r = await client.post(
        "/runs", json={"workflow": "w", "version": "1", "rate_limit": {"name": "nope"}}
    )
    error_of(r, 404, "rate_limit_not_found")
    await define(client, "starts", 2, 1_000)
    too_many = {"workflow": "w", "version": "1", "rate_limit": {"name": "starts", "units": 3}}
    error_of(await client.post("/runs", json=too_many), 409, "conflict")
    for bad in (
        {"rate_limit": {"name": "starts", "units": 0}},
        {"rate_limit": {"name": "starts"}, "delay": 1_000},
        {"rate_limit": {"name": "starts"}, "start_at": "2100-01-01T00:00:00Z"},
    ):
        r = await client.post("/runs", json={"workflow": "w", "version": "1", **bad})
        error_of(r, 422, "payload_validation")
    assert (await client.get("/runs")).json()["runs"] == []
    async with harness.app.state.db.reader() as tx:
        assert await tx.fetch("SELECT * FROM rate_limit_buckets") == []


# -- found in review ----------------------------------------------------------------------------


async def test_raising_a_limit_applies_from_the_next_grant(harness: Harness) -> None:
    """A key that used a slow limit is not held to it once the limit is raised."""
    client = harness.client
    await define(client, "api", 1, 3_600_000)  # one an hour
    assert (await acquire(client, "api"))["granted"]
    await define(client, "api", 100, 1_000)  # now a hundred a second
    harness.advance(1_000)  # a full window of the new setting later
    answer = await acquire(client, "api")
    assert answer["granted"], answer


@pytest.mark.only_on("postgresql", "SQLite's single writer runs the two one after the other")
async def test_an_acquisition_racing_the_limits_delete_is_not_found(
    harness: Harness, db_url: str
) -> None:
    """PostgreSQL: an acquisition that read the limit just before its delete commits
    answers 404, not a foreign key's 500."""
    client, db = harness.client, harness.app.state.db
    await define(client, "api", 10, 1_000)
    answers: list[httpx.Response] = []

    async def ask() -> None:
        answers.append(await client.post("/rate-limits/api/acquire", json={"key": "new"}))

    async with anyio.create_task_group() as tg, db.transaction() as tx:
        # the limit's delete, not yet committed (as `RateLimits.delete` writes it)
        await tx.execute("DELETE FROM rate_limit_buckets WHERE namespace = 'default'")
        await tx.execute("DELETE FROM rate_limits WHERE namespace = 'default'")
        tg.start_soon(ask)
        while True:  # until the acquisition waits on the delete's lock; then commit
            async with db.reader() as watcher:
                waiting = await watcher.fetch(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%rate_limit%'"
                )
            if waiting:
                break
            await anyio.sleep(0.01)
    error_of(answers[0], 404, "rate_limit_not_found")


async def test_a_rate_limit_name_with_a_slash_is_refused(harness: Harness) -> None:
    """A `/` would split the routes' path (`/rate-limits/{name}`), so no such limit can
    be defined: a start naming one is a 422, not a 404 for a limit nobody could define."""
    client = harness.client
    r = await client.post(
        "/runs", json={"workflow": "w", "version": "1", "rate_limit": {"name": "team/openai"}}
    )
    error_of(r, 422, "payload_validation")


async def test_a_wait_longer_than_a_duration_can_say_is_answered(harness: Harness) -> None:
    """Reserved starts can push a key's next unit past the longest duration the wire
    carries (100 years): the refusal still answers (it failed with a 500, which a worker
    retried for ever), and a start reserved further off than a delay may be is a 409."""
    client = harness.client
    century = 36_525 * 86_400_000
    await define(client, "century", 1, century)
    for _ in range(2):  # now, and a century on
        await start(client, rate_limit={"name": "century"})
    answer = await acquire(client, "century")
    assert not answer["granted"]
    assert to_ms(answer["retry_at"]) == harness.clock.now + 2 * century
    assert answer["retry_after"] == century  # as long as the wire says, then ask again
    third = {"workflow": "w", "version": "1", "rate_limit": {"name": "century"}}
    r = await client.post("/runs", json=third)
    error_of(r, 409, "conflict")
    assert len((await client.get("/runs")).json()["runs"]) == 2


async def test_a_limit_of_more_units_than_milliseconds_is_reached_in_batches(
    harness: Harness,
) -> None:
    """100 units per 10 ms (10 000 a second): one grant per millisecond per key, as the
    guide says, so units asked one by one top out at 10 per window; asked ten at a time
    they go further (each request of 10 also waits for the 9 intervals before it)."""
    client = harness.client
    await define(client, "fast", 100, 10)
    for units, reachable in ((1, 10), (10, 50)):
        harness.advance(1_000)  # a fresh window for the key
        granted = 0
        for _ in range(10):  # each millisecond of one window: ask until refused
            while (await acquire(client, "fast", units=units))["granted"]:
                granted += units
            harness.advance(1)
        assert granted == reachable, (units, granted)


@pytest.mark.only_on("postgresql", "SQLite's single writer runs the two one after the other")
async def test_a_delete_and_an_acquisition_lock_in_one_order(harness: Harness, db_url: str) -> None:
    """PostgreSQL: an acquisition keeps the limit's row, then locks the bucket; a delete
    that took the buckets first and then waited for the limit's row deadlocked with it."""
    client, db = harness.client, harness.app.state.db
    await define(client, "api", 10, 1_000)
    assert (await acquire(client, "api", key="k"))["granted"]
    deleted: list[httpx.Response] = []

    async def delete() -> None:
        deleted.append(await client.delete("/rate-limits/api"))

    async with anyio.create_task_group() as tg, db.transaction() as tx:
        # an acquisition's first step (as `acquire_in` takes it): the limit's row kept
        await tx.fetch(f"SELECT 1 FROM rate_limits WHERE name = 'api'{tx.keep_rows}")
        tg.start_soon(delete)
        while True:  # until the delete waits for a lock
            async with db.reader() as watcher:
                waiting = await watcher.fetch(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%rate_limit%'"
                )
            if waiting:
                break
            await anyio.sleep(0.01)
        # its second step: the bucket, which the delete must not be holding
        with anyio.fail_after(30):
            await tx.fetch(f"SELECT 1 FROM rate_limit_buckets WHERE key = 'k'{tx.lock_rows}")
    assert deleted[0].status_code == 200, deleted[0].text
    metrics = (await client.get("http://aiki/metrics")).text.splitlines()
    retries = [line for line in metrics if line.startswith("aiki_db_transaction_retries_total")]
    assert retries == ["aiki_db_transaction_retries_total 0.0"]  # no deadlock, no retry


async def test_a_request_asked_again_gets_its_grant_back(harness: Harness) -> None:
    """A retry of a request whose answer was lost (same `request_id`) takes nothing."""
    client = harness.client
    await define(client, "hourly", 1, 3_600_000)
    ask = {"key": "k", "request_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}
    first = (await client.post("/rate-limits/hourly/acquire", json=ask)).json()
    harness.advance(5)
    again = (await client.post("/rate-limits/hourly/acquire", json=ask)).json()
    assert first["granted"] and again == first
    other = {"key": "k", "request_id": "01ARZ3NDEKTSV4RRFFQ69G5FAW"}
    refused = (await client.post("/rate-limits/hourly/acquire", json=other)).json()
    assert not refused["granted"]
    assert to_ms(refused["retry_at"]) == to_ms(first["granted_at"]) + 3_600_000
