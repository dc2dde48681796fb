"""Edges where pausing meets waiting: a retry back-off, a wait withdrawn, the Host check.

Each case was found by trying to break the pause-at-the-boundary and wait-withdrawal
rules: a paused run waits for nothing (its waits are withdrawn, its replay reports
them again), except a retry back-off, which no replay reports and which a resume
honours; an event that came in time is taken even by a wait withdrawn meanwhile.
"""

from __future__ import annotations

import tracemalloc
from typing import TYPE_CHECKING, Any

from aiki_server._auth import HostCheck
from server_api import FAR_FUTURE, claim, claim_one, get_run, start, transition, wait_status

if TYPE_CHECKING:
    import httpx

    from server_api import Harness

ERROR = {"type": "builtins.ValueError", "message": "boom", "retryable": True}
HOUR_MS = 3_600_000
NAP = {"kind": "sleep", "name": "nap", "occurrence": 0, "wake_at": FAR_FUTURE}


async def pausing(client: httpx.AsyncClient) -> dict[str, Any]:
    """A claimed run whose pause was requested; its claim."""
    await start(client)
    run: dict[str, Any] = (await claim_one(client))["run"]
    r = await client.post(f"/runs/{run['id']}/pause")
    assert r.json()["pause_requested"] is True
    return run


async def test_a_retry_failing_at_the_boundary_keeps_its_back_off_through_pause(
    server: httpx.AsyncClient,
) -> None:
    run = await pausing(server)
    fail = {"kind": "fail", "error": ERROR, "retry_delay": HOUR_MS}
    r = await transition(server, run["id"], run["revision"], fail)
    assert r.json()["run"]["status"] == "paused"

    r = await server.post(f"/runs/{run['id']}/resume")

    assert r.json()["status"] == "awaiting_retry"
    assert await claim(server) == []  # an hour of back-off was asked for


async def test_a_run_paused_during_its_retry_back_off_resumes_into_it(
    server: httpx.AsyncClient,
) -> None:
    await start(server)
    run = (await claim_one(server))["run"]
    fail = {"kind": "fail", "error": ERROR, "retry_delay": HOUR_MS}
    await transition(server, run["id"], run["revision"], fail)
    await server.post(f"/runs/{run['id']}/pause")

    r = await server.post(f"/runs/{run['id']}/resume")

    assert r.json()["status"] == "awaiting_retry"
    assert await claim(server) == []
    detail = await get_run(server, run["id"])
    assert [w["kind"] for w in detail["waits"]] == ["retry"]


async def test_a_run_paused_on_a_wait_waits_for_nothing_and_cannot_be_woken(
    server: httpx.AsyncClient,
) -> None:
    run = await pausing(server)
    r = await transition(server, run["id"], run["revision"], {"kind": "suspend", "waits": [NAP]})
    assert r.json()["run"]["status"] == "paused"
    paused = await get_run(server, run["id"])
    assert paused["waits"] == []
    assert [s["status"] for s in paused["sleeps"]] == ["withdrawn"]
    assert (await server.post(f"/runs/{run['id']}/wake")).status_code == 409

    await server.post(f"/runs/{run['id']}/resume")
    await claim_one(server)

    running = await get_run(server, run["id"])
    assert running["status"] == "running"
    assert running["waits"] == []


async def test_an_event_sent_in_time_is_taken_by_its_wait_withdrawn_meanwhile(
    harness: Harness,
) -> None:
    h = harness
    await start(h.client)
    run = (await claim_one(h.client))["run"]
    waits = [
        {"kind": "event", "name": "approved", "occurrence": 0, "timeout": 10_000},
        {"kind": "sleep", "name": "reminder", "occurrence": 0, "duration": 1_000},
    ]
    await transition(h.client, run["id"], run["revision"], {"kind": "suspend", "waits": waits})
    h.advance(2_000)  # the reminder is due: queued, the event wait withdrawn
    await wait_status(h.client, run["id"], "queued")
    r = await h.client.post(f"/runs/{run['id']}/events", json={"name": "approved", "data": 1})
    assert r.status_code == 200, r.text  # at 2 s, well before the 10 s timeout
    h.clock.advance(20_000)  # the workers were busy for a while
    again = (await claim_one(h.client))["run"]

    # the replay: the reminder is over, and it still waits for the approval
    suspend = {"kind": "suspend", "waits": waits[:1]}
    r = await transition(h.client, run["id"], again["revision"], suspend)

    assert r.json()["run"]["status"] == "queued"  # the event is there: nothing to wait for
    detail = await get_run(h.client, run["id"])
    assert [w["status"] for w in detail["event_waits"]] == ["received"]


def test_the_host_check_takes_an_ipv6_public_url_and_allowed_host() -> None:
    check = HostCheck("http://[2001:db8::1]:9850", ("[2001:db8::2]",))
    assert check.allows("[2001:db8::1]:9850")
    assert check.allows("[2001:DB8::2]")
    assert check.allows("[::1]:9850")
    assert not check.allows("[2001:db8::3]:9850")
    assert not check.allows("rebind.evil.example")


def test_the_host_check_answers_the_same_after_a_flood_of_made_up_hosts() -> None:
    """Its remembered answers stay right however many names it is sent."""
    check = HostCheck("https://aiki.example.com", ())
    assert check.allows("aiki.example.com") and not check.allows("evil.example")
    for n in range(5_000):
        assert not check.allows(f"rebind-{n}.evil.example:9850")
    assert check.allows("aiki.example.com")
    assert check.allows("127.0.0.1:9850")
    assert not check.allows("evil.example")


def test_the_host_check_keeps_no_huge_host_header() -> None:
    """A client may send a `Host` of megabytes (httptools takes it): refused, and not kept."""
    check = HostCheck("https://aiki.example.com", ())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(20):
            assert not check.allows(f"{n}" + "a" * 4_000_000)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000, f"{kept:,} bytes kept after 20 Host headers of 4 MB"
    assert check.allows("aiki.example.com")
