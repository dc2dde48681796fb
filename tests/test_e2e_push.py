"""Push delivery end to end: server processes push runs to a real endpoint process.

The endpoint is `tests/push_app.py` under uvicorn: `aiki_worker.asgi_app` serving
the `push-steps` workflow, behind `push_app.Front`, which counts every push in a file
and can refuse (503) or mishandle the first ones. Task bodies count each execution in
a file of their own, so a test sees what ran across pushes and kills. Endpoints are
registered through the endpoints API, as an operator would, and their health read
there.
"""

from __future__ import annotations

import signal
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from ulid import ULID

import push_app
from aiki_client import Client
from aiki_core import RunStatus
from aiki_core.push import PushSecret
from aiki_server._push_client import PushClient
from aiki_server.testing import free_port
from e2e_support import QUIET, Counters, database
from push_app import Steps, steps_v1

if TYPE_CHECKING:
    from pathlib import Path

    from aiki_core.wire import EndpointInfo, RunDetail
    from aiki_server._push_client import PushResult
    from aiki_server.testing import LoggedProcess
    from live_processes import LiveProcesses

pytestmark = pytest.mark.slow

RESULT_TIMEOUT = timedelta(seconds=90)


class Endpoint:
    """A `push_app.py` process registered as a workflow endpoint, and its files."""

    def __init__(self, processes: LiveProcesses, server_url: str, tmp_path: Path) -> None:
        self.processes = processes
        self.server_url = server_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.counters = Counters(tmp_path / "counters")
        self.pushes = tmp_path / "pushes.count"
        self.pushes.touch()
        self.id = ""
        self.secret = str(PushSecret.generate())

    async def register(self, client: Client, *, max_in_flight: int = 4) -> None:
        """Register the endpoint for `push-steps` through the API; keep its id and secret."""
        created = await client.endpoints.create(
            self.url, workflows=[steps_v1], max_in_flight=max_in_flight
        )
        self.id, self.secret = created.endpoint.id, created.secret

    async def start(self, *args: str) -> LoggedProcess:
        """Start the process (`args`: `--fail-first N`); return it once it answers."""
        await push_app.start(
            self.processes,
            self.server_url,
            self.secret,
            self.counters.directory,
            "--pushes",
            str(self.pushes),
            *args,
            port=self.port,
        )
        return self.processes.started[-1]

    def pushed(self) -> int:
        """How many pushes reached the process (refused ones included)."""
        return len(self.pushes.read_text().splitlines())

    async def info(self, client: Client) -> EndpointInfo:
        """The endpoint as the API shows it, with the health of its pushes."""
        return await client.endpoints.get(self.id)


def moves(detail: RunDetail, status: RunStatus) -> list[str]:
    """The reasons of the run's moves to `status`, oldest first."""
    return [
        h.reason or "" for h in detail.history if h.entity == "run" and h.to_status == status.value
    ]


async def pushes_counted(server_url: str, outcome: str) -> float:
    """`aiki_pushes_total{kind="workflows",outcome=...}` of one server's `/metrics`."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{server_url}/metrics")).text
    wanted = f'aiki_pushes_total{{kind="workflows",outcome="{outcome}"}} '
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line.removeprefix(wanted))
    return 0.0


async def insert_unreadable_endpoint(db_url: str, url: str) -> None:
    """A workflow endpoint row whose `serves` is not JSON (no API writes one)."""
    async with database(db_url) as db:
        await db.write(
            lambda tx: tx.execute(
                "INSERT INTO endpoints (id, namespace, url, kind, serves, max_in_flight,"
                " timeout_ms, secrets, created_at)"
                " VALUES ($1, 'default', $2, 'workflows', 'not json', 4, 10000, '[]', 0)",
                str(ULID()),
                url,
            )
        )


async def test_fifty_runs_are_pushed_and_completed_with_each_task_run_once(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    endpoint = Endpoint(processes, server.base_url, tmp_path)
    async with Client(server.base_url, logger=QUIET) as client:
        await endpoint.register(client, max_in_flight=8)
        # a row the dispatcher cannot read stops only itself
        await insert_unreadable_endpoint(db_url, endpoint.url)
        await endpoint.start()
        handles = [await steps_v1.start(client, Steps(key=f"r{i}", size=2)) for i in range(50)]
        for handle in handles:
            assert await handle.result(timeout=RESULT_TIMEOUT) == 0 + 1
        detail = await handles[0].detail()
    assert moves(detail, RunStatus.RUNNING) == [f"claimed by endpoint:{endpoint.id}"]
    assert endpoint.counters.counts() == {f"r{i}-{s}": 1 for i in range(50) for s in range(2)}
    assert endpoint.pushed() == 50
    assert await pushes_counted(server.base_url, "ok") == 50
    assert await pushes_counted(server.base_url, "error") > 0  # the unreadable row's


async def test_a_run_on_an_endpoint_killed_mid_run_is_pushed_again_without_redoing_tasks(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    # a run whose claim the dead endpoint still holds goes back once idle for 2 s
    server = await processes.start_server(
        db_url, "--claim-idle-timeout", "2", "--push-cool-off", "1"
    )
    endpoint = Endpoint(processes, server.base_url, tmp_path)
    async with Client(server.base_url, logger=QUIET) as client:
        await endpoint.register(client)
        process = await endpoint.start()
        handle = await steps_v1.start(client, Steps(key="k", size=4, block_at=2))
        await endpoint.counters.wait_for_total("k-2", 1, timeout=60)  # step 2 blocks now
        assert (await handle.detail()).status is RunStatus.RUNNING
        process.kill()
        assert await process.wait() == -signal.SIGKILL
        await endpoint.start()  # the same port; step 2 returns on its next execution
        assert await handle.result(timeout=RESULT_TIMEOUT) == 0 + 1 + 4 + 9
        detail = await handle.detail()
    # the steps on record were replayed; only the one in flight at the kill ran again
    assert endpoint.counters.counts("k-") == {"k-0": 1, "k-1": 1, "k-2": 2, "k-3": 1}
    claims = moves(detail, RunStatus.RUNNING)
    assert len(claims) >= 2
    assert set(claims) == {f"claimed by endpoint:{endpoint.id}"}


async def test_an_endpoint_that_answers_503_five_times_then_200_completes_the_run(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url, "--push-cool-off", "1")
    endpoint = Endpoint(processes, server.base_url, tmp_path)
    async with Client(server.base_url, logger=QUIET) as client:
        await endpoint.register(client)
        await endpoint.start("--fail-first", "5")
        handle = await steps_v1.start(client, Steps(key="f"))
        assert await handle.result(timeout=RESULT_TIMEOUT) == 0 + 1 + 4
        detail = await handle.detail()
        # the success closes the circuit (once the server has its answer)
        with anyio.fail_after(10):
            while (info := await endpoint.info(client)).failures:  # noqa: ASYNC110 - polls
                await anyio.sleep(0.05)
        health = (info.status, info.failing_since, info.last_error, info.retry_at)
        assert health == ("healthy", None, None, None)
    assert endpoint.pushed() == 6
    assert endpoint.counters.counts() == {"f-0": 1, "f-1": 1, "f-2": 1}
    released = moves(detail, RunStatus.QUEUED)[1:]  # after its start
    assert len(released) == 5
    assert all(reason.endswith("failed: HTTP 503") for reason in released), released
    assert await pushes_counted(server.base_url, "refused") == 5


async def test_an_endpoint_that_always_fails_opens_its_circuit_and_the_run_says_why_it_waits(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)  # a cool-off of 30 s
    endpoint = Endpoint(processes, server.base_url, tmp_path)
    async with Client(server.base_url, logger=QUIET) as client:
        await endpoint.register(client)
        await endpoint.start("--fail-first", "1000000")
        handle = await steps_v1.start(client, Steps(key="n"))
        with anyio.fail_after(60):  # the back-off before the circuit opens: 1 s, 2 s, 4 s, 8 s
            while (await endpoint.info(client)).failures < 5:  # noqa: ASYNC110 - polls
                await anyio.sleep(0.05)
        # the open circuit holds every push back for its cool-off
        await anyio.sleep(10)
        assert endpoint.pushed() == 5
        info = await endpoint.info(client)
        assert (info.status, info.failures, info.last_error) == ("open", 5, "HTTP 503")
        # failed pushes are not claim failures: the run is still queued, and says why
        detail = await handle.detail()
        assert detail.status is RunStatus.QUEUED
        assert detail.pending_reason is not None
        failing = f"endpoint {endpoint.url} failing: HTTP 503 since "
        assert detail.pending_reason.startswith(failing)
        async with httpx.AsyncClient() as http:
            page = await http.get(f"{server.base_url}/runs/{handle.id}")
        assert failing in page.text
    assert endpoint.counters.counts() == {}


@pytest.mark.parametrize(
    ("fault", "reason", "outcome"),
    [
        ("keep", "endpoint {id} answered its push but still held the run", "ok"),
        (
            "garble",
            "push to endpoint {id} failed: HTTP 2xx without a pushed run answer",
            "invalid",
        ),
    ],
)
async def test_a_run_an_endpoint_answered_for_but_did_not_let_go_is_pushed_again(
    db_url: str, processes: LiveProcesses, tmp_path: Path, fault: str, reason: str, outcome: str
) -> None:
    server = await processes.start_server(db_url)
    endpoint = Endpoint(processes, server.base_url, tmp_path)
    async with Client(server.base_url, logger=QUIET) as client:
        await endpoint.register(client)
        await endpoint.start("--then", fault)  # the first push is answered without running it
        handle = await steps_v1.start(client, Steps(key="h"))
        assert await handle.result(timeout=RESULT_TIMEOUT) == 0 + 1 + 4
        detail = await handle.detail()
    assert endpoint.pushed() == 2
    assert endpoint.counters.counts() == {"h-0": 1, "h-1": 1, "h-2": 1}
    assert moves(detail, RunStatus.QUEUED)[1:] == [reason.format(id=endpoint.id)]
    assert await pushes_counted(server.base_url, outcome) >= 1


@pytest.mark.only_on("postgresql", "replicas share a database only on PostgreSQL")
async def test_two_replicas_push_each_run_to_one_endpoint_and_complete_it_once(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    first = await processes.start_server(db_url)
    second = await processes.start_server(db_url)
    endpoint = Endpoint(processes, first.base_url, tmp_path)
    async with (
        Client(first.base_url, logger=QUIET) as one,
        Client(second.base_url, logger=QUIET) as two,
    ):
        await endpoint.register(one, max_in_flight=2)
        await endpoint.start()
        handles = [await steps_v1.start(one, Steps(key=f"a{i}", size=1)) for i in range(10)]
        handles += [await steps_v1.start(two, Steps(key=f"b{i}", size=1)) for i in range(10)]
        for handle in handles:
            await handle.result(timeout=RESULT_TIMEOUT)
        details = [await handle.detail() for handle in handles]
    for detail in details:
        assert len(moves(detail, RunStatus.RUNNING)) == 1
        assert len(moves(detail, RunStatus.COMPLETED)) == 1
    assert Counter(endpoint.counters.counts()) == Counter(
        {f"{side}{i}-0": 1 for side in "ab" for i in range(10)}
    )
    assert sum([await pushes_counted(replica.base_url, "ok") for replica in (first, second)]) == 20


async def test_a_push_in_flight_at_shutdown_gives_its_run_back(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    endpoint = Endpoint(processes, server.base_url, tmp_path)
    async with Client(server.base_url, logger=QUIET) as client:
        await endpoint.register(client)
        await endpoint.start()
        handle = await steps_v1.start(client, Steps(key="s", size=2, block_at=0))
        await endpoint.counters.wait_for_total("s-0", 1, timeout=60)  # step 0 blocks now
    await server.stop()  # SIGTERM: a graceful shutdown
    async with database(db_url) as db, db.reader() as tx:
        run = await tx.fetchrow("SELECT status, claimed_by FROM runs WHERE id = $1", handle.id)
        last = await tx.fetchrow(
            "SELECT reason FROM state_transitions WHERE run_id = $1 ORDER BY seq DESC", handle.id
        )
    assert run is not None and last is not None
    assert (run["status"], run["claimed_by"]) == ("queued", None)
    assert last["reason"] == f"push to endpoint {endpoint.id} cut by a shutdown"
    # the next server pushes it again, to the same endpoint, where step 0 now returns
    again = await processes.start_server(db_url, port=server.port)
    async with Client(again.base_url, logger=QUIET) as client:
        result = await client.run_handle(handle.id).result(timeout=RESULT_TIMEOUT)
    assert result == 0 + 1
    assert endpoint.counters.counts("s-") == {"s-0": 2, "s-1": 1}


async def test_the_push_client_says_what_an_endpoint_did(
    processes: LiveProcesses, tmp_path: Path
) -> None:
    endpoint = Endpoint(processes, "http://127.0.0.1:9", tmp_path)  # it calls no server
    await endpoint.start()
    base = f"http://127.0.0.1:{endpoint.port}"
    secrets = [PushSecret.parse(endpoint.secret)]
    client = PushClient()
    try:

        async def push(path: str, timeout: float = 10) -> PushResult:
            return await client.push(f"{base}{path}", b"{}", secrets, timeout)

        ok = await push("/answer/200")
        assert (ok.ok, ok.answer, ok.error) == (True, b"{}", None)
        busy = await push("/answer/503?retry_after=7")
        assert (busy.outcome, busy.error, busy.retry_after) == ("refused", "HTTP 503", 7.0)
        dated = await push("/answer/429?retry_after=Wed, 21 Oct 2015 07:28:00 GMT")
        assert (dated.error, dated.retry_after) == ("HTTP 429", 0.0)
        moved = await push("/answer/302")  # not followed: the server signs for one URL
        assert (moved.outcome, moved.error) == ("refused", "HTTP 302")
        big = await push("/big")
        assert (big.outcome, big.error) == ("too_large", "answer over 1048576 bytes")
        slow = await push("/slow", timeout=0.5)
        assert (slow.outcome, slow.error) == ("timeout", "timed out after 0.5 s")
        unsigned = await client.push(endpoint.url, b"{}", [PushSecret.generate()], 10)
        assert (unsigned.outcome, unsigned.error) == ("refused", "HTTP 401")
        nobody = await client.push(f"http://127.0.0.1:{free_port()}/", b"{}", secrets, 10)
        assert (nobody.outcome, nobody.error) == ("connection", "connection refused")
        for url in ("http://[::1/push", "ftp://127.0.0.1/push"):  # rows the API refuses
            assert (await client.push(url, b"{}", secrets, 10)).outcome == "connection"
    finally:
        await client.aclose()
    assert endpoint.pushed() == 1  # the unsigned push, which ran nothing
    assert endpoint.counters.counts() == {}
