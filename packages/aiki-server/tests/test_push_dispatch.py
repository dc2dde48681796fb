"""The push dispatcher on a clock the test moves: an endpoint nobody listens on.

Each push meets a refused connection (real HTTP to a free port), so every push
fails at once, and the endpoint's back-off, circuit and trial push follow the
manual clock alone. Pushes that succeed are tested end to end in
`tests/test_e2e_push.py`, with a real endpoint process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from aiki_server._push_health import COOL_OFF_MS
from aiki_server.testing import free_port
from server_api import get_run, start, wait_status

if TYPE_CHECKING:
    import httpx

    from conftest import Harness, HarnessFactory

TRIPLE = {"workflow": "w", "version": "1", "pool": "default"}
BACKOFF_PASSED_MS = 8_000
"""More than the fourth back-off can be (1 s doubling, at most 8 s)."""


async def create_endpoint(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    r = await client.post("/endpoints", json={"url": url, "workflows": [TRIPLE]})
    assert r.status_code == 201, r.text
    endpoint: dict[str, Any] = r.json()["endpoint"]
    return endpoint


async def endpoint_after(h: Harness, endpoint_id: str, failures: int) -> dict[str, Any]:
    """The endpoint once its row counts `failures` failed pushes (the dispatcher ticks)."""
    with anyio.fail_after(10):
        while True:
            r = await h.client.get(f"/endpoints/{endpoint_id}")
            assert r.status_code == 200, r.text
            endpoint: dict[str, Any] = r.json()
            if endpoint["failures"] >= failures:
                return endpoint
            await anyio.sleep(0.02)


def pushes_of(run: dict[str, Any]) -> list[str]:
    """The reasons the run went back to the queue after a push."""
    return [
        h["reason"]
        for h in run["history"]
        if h["entity"] == "run" and h["to_status"] == "queued" and "push to" in h["reason"]
    ]


async def test_failed_pushes_back_off_open_the_circuit_and_send_one_trial(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness() as h:
        url = f"http://127.0.0.1:{free_port()}/push"
        endpoint = await create_endpoint(h.client, url)
        run = await start(h.client)
        failed = await endpoint_after(h, endpoint["id"], 1)
        assert (failed["status"], failed["last_error"]) == ("failing", "connection refused")
        # nothing more goes out until the back-off has passed on the server's clock
        await anyio.sleep(1.5)
        assert (await endpoint_after(h, endpoint["id"], 1))["failures"] == 1
        for failures in range(2, 6):
            h.advance(BACKOFF_PASSED_MS)
            await endpoint_after(h, endpoint["id"], failures)
        opened = await endpoint_after(h, endpoint["id"], 5)
        assert opened["status"] == "open"
        h.advance(COOL_OFF_MS - 1)  # the cool-off has not passed
        await anyio.sleep(1.5)
        assert (await endpoint_after(h, endpoint["id"], 5))["failures"] == 5
        h.advance(1)  # it has: one trial, which fails and doubles the cool-off
        trial = await endpoint_after(h, endpoint["id"], 6)
        assert trial["status"] == "open"
        # six failed pushes gave the run back six times (each once its failure was
        # counted); none counted against it
        await wait_status(h.client, run["id"], "queued")
        detail = await get_run(h.client, run["id"])
        assert (
            pushes_of(detail)
            == [f"push to endpoint {endpoint['id']} failed: connection refused"] * 6
        )
        since = failed["failing_since"][:19].replace("T", " ")
        assert detail["pending_reason"] == (
            f"endpoint {url} failing: connection refused since {since} UTC;"
            " the run stays queued until a push to it succeeds"
        )


async def test_with_push_delivery_off_an_endpoints_runs_wait_for_a_pulling_worker(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness(push_delivery=False) as h:
        endpoint = await create_endpoint(h.client, f"http://127.0.0.1:{free_port()}/push")
        run = await start(h.client)
        await anyio.sleep(1.5)  # a dispatcher would have pushed by now
        r = await h.client.get(f"/endpoints/{endpoint['id']}")
        assert (r.json()["status"], r.json()["failures"]) == ("healthy", 0)
        detail = await get_run(h.client, run["id"])
        assert (detail["status"], pushes_of(detail)) == ("queued", [])
        # a healthy endpoint serves it: no "no worker serves" reason
        assert detail["pending_reason"] is None


async def test_an_endpoint_url_the_http_client_refuses_is_a_failed_push_not_a_hot_loop(
    make_harness: HarnessFactory,
) -> None:
    # a row from before the URL check refused such hosts: the HTTP client refuses it
    # when it builds the request. Before, that escaped the push client: the run was
    # given back with no failure on the endpoint, which woke the dispatcher to push it
    # again at once, forever (a history row per push, no back-off, no circuit)
    async with make_harness(push_delivery=False) as before:
        endpoint = await create_endpoint(before.client, f"http://127.0.0.1:{free_port()}/")
        await before.app.state.db.write(
            lambda tx: tx.execute("UPDATE endpoints SET url = 'http://999.1.1.1/push'")
        )
    async with make_harness() as h:
        run = await start(h.client)
        failed = await endpoint_after(h, endpoint["id"], 1)
        assert failed["last_error"].startswith("invalid URL")
        await anyio.sleep(1.5)  # the back-off holds on the server's clock
        assert (await endpoint_after(h, endpoint["id"], 1))["failures"] == 1
        detail = await get_run(h.client, run["id"])
        assert len(pushes_of(detail)) == 1
