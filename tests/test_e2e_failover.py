"""A client given several server replicas goes on through another when one is gone.

Replicas share a database only on PostgreSQL: there, two server processes serve one
database and the first is SIGKILLed. On SQLite the first URL is one where no server
listens at all. A start whose connection drops after the server did it is sent to
the next replica, and is the same start there: one run, not two.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import pytest

from aiki_client import Client
from aiki_core import RunStatus, ServerUnavailableError
from aiki_server.testing import free_port
from aiki_task import task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, workflow
from e2e_support import QUIET
from fault_proxy import Fault, FaultProxy

if TYPE_CHECKING:
    from aiki_server.testing import ServerProcess
    from live_processes import LiveProcesses

RESULT_TIMEOUT = timedelta(seconds=30)


@task("failover-double")
async def double(n: int) -> int:
    """Twice `n`."""
    return 2 * n


doubling = workflow("failover-doubling")


@doubling.v("1")
async def doubling_v1(run: WorkflowRun, n: int) -> int:
    """Double `n` twice, in two tasks."""
    return await double.start(run, await double.start(run, n))


async def first_and_second(
    db_url: str, processes: LiveProcesses
) -> tuple[str, ServerProcess | None, ServerProcess]:
    """The first replica's URL, its server (to kill; none on SQLite), and the second one."""
    second = await processes.start_server(db_url)
    if "sqlite" in db_url:  # one process owns a SQLite file: the first URL is dead
        return f"http://127.0.0.1:{free_port()}", None, second
    first = await processes.start_server(db_url)
    return first.base_url, first, second


async def test_calls_and_a_worker_go_on_through_the_second_replica(
    db_url: str, processes: LiveProcesses
) -> None:
    first_url, first, second = await first_and_second(db_url, processes)
    async with (
        Client([first_url, second.base_url], logger=QUIET) as client,
        Worker(client, [doubling_v1], logger=QUIET, max_backoff=timedelta(milliseconds=200)),
    ):
        before = await doubling_v1.start(client, 1)
        assert await before.result(timeout=RESULT_TIMEOUT) == 4
        # SIGKILL, with the worker's long-polls open on it: they drop, and connections
        # are refused from now on
        if first is not None:
            first.kill()
            await first.wait()

        after = await doubling_v1.start(client, 5)
        assert await after.result(timeout=RESULT_TIMEOUT) == 20
        page = await client.list_runs()
        # the replica that answered is remembered: the dead one is not tried first any more
        assert client.base_url == second.base_url

    assert {run.id for run in page.runs} == {before.id, after.id}
    assert all(run.status is RunStatus.COMPLETED for run in page.runs)


@pytest.mark.only_on("postgresql", "replicas share a database only on PostgreSQL")
async def test_a_start_whose_answer_was_lost_is_one_run(
    db_url: str, processes: LiveProcesses
) -> None:
    first = await processes.start_server(db_url)
    second = await processes.start_server(db_url)

    def drop_writes(method: str, path: str) -> Fault | None:
        return Fault("drop_after") if method == "POST" else None

    async with (
        FaultProxy(first.base_url, drop_writes) as proxy,
        Client([proxy.base_url, second.base_url], logger=QUIET) as client,
    ):
        handle = await doubling_v1.start(client, 3)
        # the proxy passes no WebSocket: the channel's opening is refused, and the calls
        # through it go as plain requests
        assert (proxy.seen[0].method, proxy.seen[0].path) == ("GET", "/api/v1/channel")
        # the first replica started it and the answer was lost; the second knew the start
        assert [(s.method, s.path) for s in proxy.seen[1:]] == [("POST", "/api/v1/runs")]
        page = await client.list_runs()
        assert [run.id for run in page.runs] == [handle.id]

        # a cancel is not safe to send twice: its lost answer is the caller's to judge
        proxy.seen.clear()
        client._http.current = 0  # back to the proxy's replica
        with pytest.raises(ServerUnavailableError):
            await handle.cancel()
        assert [(s.method, s.path) for s in proxy.seen] == [
            ("POST", f"/api/v1/runs/{handle.id}/cancel")
        ]
        with anyio.fail_after(10):
            assert await handle.wait_for_status([RunStatus.CANCELLED]) is RunStatus.CANCELLED
