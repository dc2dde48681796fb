"""Push delivery end to end: server processes push runs to a real endpoint process.

The endpoint is `tests/push_endpoint_app.py` under uvicorn: it checks each push's
signature, records a task and completes the run through `aiki_client`, and notes
every push in a ledger. Endpoints are registered through the API.
"""

from __future__ import annotations

import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from ulid import ULID

from aiki_client import Client
from aiki_core import RunStatus
from aiki_core.push import PushSecret
from aiki_core.wire import StartRunRequest
from aiki_server._push_client import PushClient
from aiki_server.testing import free_port
from e2e_support import QUIET, database

if TYPE_CHECKING:
    from pydantic import JsonValue

    from aiki_client import WorkflowRunHandle
    from aiki_core.wire import EndpointInfo, RunDetail
    from aiki_server._push_client import PushResult
    from aiki_server.testing import LoggedProcess
    from live_processes import LiveProcesses

PUSH_APP = Path(__file__).with_name("push_endpoint_app.py")
WORKFLOW = "push-echo"
RESULT_TIMEOUT = timedelta(seconds=90)


class Endpoint:
    """An endpoint process of `push_endpoint_app.py`, its row, and its ledger."""

    def __init__(self, processes: LiveProcesses, server_url: str, tmp_path: Path) -> None:
        self.processes = processes
        self.server_url = server_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/push"
        self.secret = str(PushSecret.generate())
        self.ledger = tmp_path / "ledger.txt"
        self.ledger.touch()
        self.id = ""
        self.process: LoggedProcess | None = None

    async def start(self, *args: str) -> None:
        """Start the process (extra `args` choose its faults); return once it listens."""
        self.process = await self.processes.spawn(
            "endpoint",
            [
                sys.executable,
                str(PUSH_APP),
                "--port",
                str(self.port),
                "--server",
                self.server_url,
                "--secret",
                self.secret,
                "--ledger",
                str(self.ledger),
                *args,
            ],
        )
        with anyio.fail_after(30):
            while True:
                try:
                    async with httpx.AsyncClient() as http:
                        await http.get(f"http://127.0.0.1:{self.port}/")
                    return
                except httpx.TransportError:
                    await anyio.sleep(0.05)

    async def register(self, client: Client, *, max_in_flight: int = 4) -> None:
        """Register the endpoint for `push-echo` 1 through the API; it signs with its secret."""
        created = await client.endpoints.create(
            self.url,
            workflows=[(WORKFLOW, "1")],
            max_in_flight=max_in_flight,
            timeout=timedelta(seconds=10),
        )
        self.id, self.secret = created.endpoint.id, created.secret

    async def info(self, client: Client) -> EndpointInfo:
        """The endpoint as the API shows it, with the health of its pushes."""
        return await client.endpoints.get(self.id)

    def lines(self, what: str) -> list[str]:
        """The run ids of the ledger's lines of kind `what` (`push`, `completed`, ...)."""
        out = []
        for line in self.ledger.read_text().splitlines():
            kind, run_id, _pid = line.split()
            if kind == what:
                out.append(run_id)
        return out

    async def wait_for(self, what: str, count: int, timeout: float = 60) -> None:
        """Wait until the ledger holds `count` lines of kind `what`."""
        with anyio.fail_after(timeout):
            while len(self.lines(what)) < count:  # noqa: ASYNC110 - a file, no event
                await anyio.sleep(0.05)


async def insert_endpoint(
    db_url: str,
    endpoint_id: str,
    url: str,
    serves: str,
    secrets: str,
    max_in_flight: int = 4,
    timeout_ms: int = 10_000,
) -> None:
    """Register a workflow endpoint of the default namespace with a row of its own."""
    async with database(db_url) as db:
        await db.write(
            lambda tx: tx.execute(
                "INSERT INTO endpoints (id, namespace, url, kind, serves, max_in_flight,"
                " timeout_ms, secrets, created_at) VALUES"
                " ($1, 'default', $2, 'workflows', $3, $4, $5, $6, 0)",
                endpoint_id,
                url,
                serves,
                max_in_flight,
                timeout_ms,
                secrets,
            )
        )


async def start_runs(client: Client, count: int) -> list[WorkflowRunHandle[JsonValue]]:
    return [
        await client.start_run(
            StartRunRequest(workflow=WORKFLOW, version="1", input={"n": n}), lambda value: value
        )
        for n in range(count)
    ]


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


async def test_twenty_runs_are_pushed_and_completed(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    endpoint = Endpoint(processes, server.base_url, tmp_path)
    # a row the dispatcher cannot read stops only itself
    await insert_endpoint(db_url, str(ULID()), endpoint.url, "not json", "[]")
    async with Client(server.base_url, logger=QUIET) as client:
        await endpoint.register(client)
        await endpoint.start()
        handles = await start_runs(client, 20)
        results = [await handle.result(timeout=RESULT_TIMEOUT) for handle in handles]
        assert results == [{"echo": {"n": n}} for n in range(20)]
        detail = await handles[0].detail()
    await endpoint.wait_for("completed", 20)  # noted once the completion is answered
    assert [task.name for task in detail.tasks] == ["echo"]
    assert moves(detail, RunStatus.RUNNING) == [f"claimed by endpoint:{endpoint.id}"]
    assert sorted(endpoint.lines("completed")) == sorted(h.id for h in handles)
    assert await pushes_counted(server.base_url, "ok") == 20
    assert await pushes_counted(server.base_url, "error") > 0  # the unreadable row's


async def test_an_endpoint_that_answers_503_five_times_then_200_completes_the_run(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url, "--push-cool-off", "1")
    endpoint = Endpoint(processes, server.base_url, tmp_path)
    async with Client(server.base_url, logger=QUIET) as client:
        await endpoint.register(client)
        await endpoint.start("--fail-first", "5")
        (handle,) = await start_runs(client, 1)
        assert await handle.result(timeout=RESULT_TIMEOUT) == {"echo": {"n": 0}}
        detail = await handle.detail()
        await endpoint.wait_for("completed", 1)
        assert len(endpoint.lines("refused")) == 5
        assert endpoint.lines("completed") == [handle.id]
        released = moves(detail, RunStatus.QUEUED)[1:]  # after its start
        assert len(released) == 5
        assert all(reason.endswith("failed: HTTP 503") for reason in released), released
        # the success closes the circuit (once the server has its answer)
        with anyio.fail_after(10):
            while (info := await endpoint.info(client)).failures:  # noqa: ASYNC110 - polls
                await anyio.sleep(0.05)
        assert (info.status, info.failing_since, info.last_error, info.retry_at) == (
            "healthy",
            None,
            None,
            None,
        )
    assert await pushes_counted(server.base_url, "refused") == 5


async def test_an_endpoint_that_always_fails_opens_its_circuit_and_the_run_says_why_it_waits(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)  # a cool-off of 30 s
    endpoint = Endpoint(processes, server.base_url, tmp_path)
    async with Client(server.base_url, logger=QUIET) as client:
        await endpoint.register(client)
        await endpoint.start("--fail-first", "1000000")
        (handle,) = await start_runs(client, 1)
        await endpoint.wait_for("refused", 5)
        with anyio.fail_after(10):
            while (await endpoint.info(client)).failures < 5:  # noqa: ASYNC110 - polls
                await anyio.sleep(0.05)
        # the open circuit holds every push back for its cool-off
        await anyio.sleep(3)
        detail = await handle.detail()
        assert len(endpoint.lines("push")) == 5
        info = await endpoint.info(client)
        assert (info.status, info.failures, info.last_error) == ("open", 5, "HTTP 503")
        # five failed pushes are not claim failures: the run is still queued, and says why
        assert detail.status is RunStatus.QUEUED
        assert detail.pending_reason is not None
        failing = f"endpoint {endpoint.url} failing: HTTP 503 since "
        assert detail.pending_reason.startswith(failing)
        async with httpx.AsyncClient() as http:
            page = await http.get(f"{server.base_url}/runs/{handle.id}")
        assert failing in page.text


async def test_a_run_pushed_to_an_endpoint_killed_mid_push_is_pushed_again(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    endpoint = Endpoint(processes, server.base_url, tmp_path)
    async with Client(server.base_url, logger=QUIET) as client:
        await endpoint.register(client)
        await endpoint.start("--first", "hang")
        (handle,) = await start_runs(client, 1)
        await endpoint.wait_for("hang", 1)
        assert (await handle.detail()).status is RunStatus.RUNNING
        assert endpoint.process is not None
        endpoint.process.kill()
        await endpoint.process.wait()
        await endpoint.start()  # the same port, without the fault
        assert await handle.result(timeout=RESULT_TIMEOUT) == {"echo": {"n": 0}}
        detail = await handle.detail()
    await endpoint.wait_for("completed", 1)
    assert endpoint.lines("hang") == [handle.id]
    assert endpoint.lines("completed") == [handle.id]
    reasons = moves(detail, RunStatus.QUEUED)[1:]
    assert reasons and all(r.startswith(f"push to endpoint {endpoint.id} failed") for r in reasons)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("keep", "endpoint {id} answered its push but still held the run"),
        ("garble", "push to endpoint {id} failed: HTTP 2xx without a pushed run answer"),
    ],
)
async def test_a_run_an_endpoint_answered_for_but_did_not_let_go_is_pushed_again(
    db_url: str, processes: LiveProcesses, tmp_path: Path, fault: str, reason: str
) -> None:
    server = await processes.start_server(db_url)
    endpoint = Endpoint(processes, server.base_url, tmp_path)
    async with Client(server.base_url, logger=QUIET) as client:
        await endpoint.register(client)
        await endpoint.start("--first", fault)
        (handle,) = await start_runs(client, 1)
        assert await handle.result(timeout=RESULT_TIMEOUT) == {"echo": {"n": 0}}
        detail = await handle.detail()
    assert endpoint.lines(fault) == [handle.id]
    assert moves(detail, RunStatus.QUEUED)[1:] == [reason.format(id=endpoint.id)]
    outcome = "ok" if fault == "keep" else "invalid"
    assert await pushes_counted(server.base_url, outcome) >= 1


async def test_two_replicas_push_each_run_to_one_endpoint_and_complete_it_once(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    if "sqlite" in db_url:
        pytest.skip("replicas share a database only on PostgreSQL")
    first = await processes.start_server(db_url)
    second = await processes.start_server(db_url)
    endpoint = Endpoint(processes, first.base_url, tmp_path)
    async with (
        Client(first.base_url, logger=QUIET) as one,
        Client(second.base_url, logger=QUIET) as two,
    ):
        await endpoint.register(two, max_in_flight=2)
        await endpoint.start()
        handles = await start_runs(one, 10) + await start_runs(two, 10)
        for handle in handles:
            await handle.result(timeout=RESULT_TIMEOUT)
        details = [await handle.detail() for handle in handles]
    await endpoint.wait_for("completed", 20)
    completed = Counter(endpoint.lines("completed"))
    assert completed == Counter(h.id for h in handles)
    for detail in details:
        assert len(moves(detail, RunStatus.COMPLETED)) == 1
    assert sum([await pushes_counted(replica.base_url, "ok") for replica in (first, second)]) == 20


async def test_a_push_in_flight_at_shutdown_gives_its_run_back(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    endpoint = Endpoint(processes, server.base_url, tmp_path)
    async with Client(server.base_url, logger=QUIET) as client:
        await endpoint.register(client)
        await endpoint.start("--first", "hang")
        (handle,) = await start_runs(client, 1)
        await endpoint.wait_for("hang", 1)
    await server.stop()  # SIGTERM: a graceful shutdown
    async with database(db_url) as db, db.reader() as tx:
        run = await tx.fetchrow("SELECT status, claimed_by FROM runs WHERE id = $1", handle.id)
        last = await tx.fetchrow(
            "SELECT reason FROM state_transitions WHERE run_id = $1 ORDER BY seq DESC", handle.id
        )
    assert run is not None and last is not None
    assert (run["status"], run["claimed_by"]) == ("queued", None)
    assert last["reason"] == f"push to endpoint {endpoint.id} cut by a shutdown"
    # the next server pushes it again, to the same endpoint, which now answers
    again = await processes.start_server(db_url, port=server.port)
    async with Client(again.base_url, logger=QUIET) as client:
        result = await client.run_handle(handle.id).result(timeout=RESULT_TIMEOUT)
    assert result == {"echo": {"n": 0}}


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
        nobody = await client.push(f"http://127.0.0.1:{free_port()}/push", b"{}", secrets, 10)
        assert (nobody.outcome, nobody.error) == ("connection", "connection refused")
        for url in ("http://[::1/push", "ftp://127.0.0.1/push"):  # rows the API refuses
            assert (await client.push(url, b"{}", secrets, 10)).outcome == "connection"
    finally:
        await client.aclose()
    assert endpoint.lines("push") == []  # the unsigned push ran nothing
