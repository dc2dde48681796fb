"""End to end with API keys: a real server process, two namespaces, a worker process each.

Keys come from `aiki-server keys create` (the live server helper runs it). Each
namespace's runs complete on its own worker, and neither namespace's client can see
or touch the other's; a revoked key stops its worker process.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import pytest

from aiki_client import Client
from aiki_core import AuthenticationError, NotFoundError, RunStatus
from aiki_server._auth import KEY_CACHE_TTL
from e2e_app import Greeted, Greeting, hello_v1
from e2e_support import QUIET, Counters, start_worker

if TYPE_CHECKING:
    from pathlib import Path

    from live_processes import LiveProcesses

RESULT_TIMEOUT = timedelta(seconds=30)


async def refused_within_ttl(client: Client) -> None:
    """Wait (at most the key cache's TTL, and a second) until `client` is refused."""
    with anyio.fail_after(KEY_CACHE_TTL + 1):
        while True:
            try:
                await client.list_runs()
            except AuthenticationError:
                return
            await anyio.sleep(0.05)


async def test_two_namespaces_each_with_its_own_worker_never_meet(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    key_a = await server.create_api_key("team-a")
    key_b = await server.create_api_key("team-b")
    counters_a, counters_b = Counters(tmp_path / "a"), Counters(tmp_path / "b")
    worker_a = await start_worker(
        processes, server.base_url, counters_a, heartbeat_ms=200, api_key=key_a.key
    )
    worker_b = await start_worker(
        processes, server.base_url, counters_b, heartbeat_ms=200, api_key=key_b.key
    )

    async with (
        Client(server.base_url, api_key=key_a.key, logger=QUIET) as a,
        Client(server.base_url, api_key=key_b.key, logger=QUIET) as b,
        Client(server.base_url, logger=QUIET) as keyless,
    ):
        await refused_within_ttl(keyless)  # the server held no key when it started
        ada = await hello_v1.start(a, Greeting(name="ada"), reference_id="greet")
        bob = await hello_v1.start(b, Greeting(name="bob"), reference_id="greet")

        assert await ada.result(timeout=RESULT_TIMEOUT) == Greeted(
            message="hello ada!", run_id=ada.id
        )
        assert await bob.result(timeout=RESULT_TIMEOUT) == Greeted(
            message="hello bob!", run_id=bob.id
        )
        # each run ran on its own namespace's worker process, once
        assert counters_a.counts() == {"greet-ada": 1}
        assert counters_b.counts() == {"greet-bob": 1}
        assert [r.id for r in (await a.list_runs()).runs] == [ada.id]
        assert [r.id for r in (await b.list_runs()).runs] == [bob.id]
        assert {(await ada.detail()).namespace, (await bob.detail()).namespace} == {
            "team-a",
            "team-b",
        }
        for foreign in (b.run_handle(ada.id), a.run_handle(bob.id)):
            with pytest.raises(NotFoundError):
                await foreign.status()
            with pytest.raises(NotFoundError):
                await foreign.cancel("not yours")
        assert await ada.status() is RunStatus.COMPLETED
        assert await bob.status() is RunStatus.COMPLETED

        # revoking B's key stops B's worker process; A goes on
        await server.revoke_api_key(key_b.id)
        assert await worker_b.wait(KEY_CACHE_TTL + 10) != 0
        assert "refused the API key" in worker_b.log_text()
        await refused_within_ttl(b)
        again = await hello_v1.start(a, Greeting(name="ada", times=2))
        assert (await again.result(timeout=RESULT_TIMEOUT)).message == "hello ada! hello ada!"
    assert worker_a.returncode is None, "A's worker process died"
