"""The client channel between real processes: one WebSocket carries a worker's calls.

A server process, and a worker in the test's process on the network path. The
channel is what the worker uses by default; these tests check that it is, that a
channel cut under the worker (a relay resetting every connection, the server
SIGKILLed and started again) loses and repeats nothing, that a revoked key cuts the
worker off, and that hostile frames on one channel harm no other worker.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aiki_client import Client
from aiki_core import AuthenticationError, NotFoundError, RunId, RunStatus
from aiki_core.wire import (
    ChannelAnswer,
    ChannelRequest,
    ClaimRequest,
    WorkflowCapability,
    decode_answer,
    encode_cancel,
    encode_request,
)
from aiki_server.testing import embedded_server
from aiki_task import task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, workflow
from e2e_support import QUIET
from tcp_relay import TcpRelay

if TYPE_CHECKING:
    from aiki_server.testing import ServerProcess
    from live_processes import LiveProcesses

RESULT_TIMEOUT = timedelta(seconds=60)
EXECUTED: Counter[str] = Counter()
"""Task bodies run in this process, by `<label>-<step>`."""


@task("channel-step")
async def step(name: str) -> str:
    """Count the execution, take a moment, answer."""
    EXECUTED[name] += 1
    await anyio.sleep(0.01)
    return name


chain = workflow("channel-chain")


@chain.v("1")
async def chain_v1(run: WorkflowRun, label: str) -> list[str]:
    """Three steps, one after the other."""
    return [await step.start(run, f"{label}:{n}") for n in range(3)]


def raw_channel(server: ServerProcess, path: str = "/api/v1/channel") -> connect:
    """A WebSocket of the test's own to the server (a hostile or hand-driven worker)."""
    return connect(f"ws://127.0.0.1:{server.port}{path}", compression=None, max_size=None)


async def answer(ws: ClientConnection) -> ChannelAnswer:
    """The next answer on a raw channel."""
    frame = await ws.recv()
    assert isinstance(frame, bytes)
    return decode_answer(frame)


async def metric(server: ServerProcess, name: str) -> dict[str, float]:
    """The samples of a counter family on the server's `/metrics`, by their labels."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{server.base_url}/metrics")).text
    pattern = re.compile(rf"^{name}_total(\{{[^}}]*\}})? (\S+)$", re.M)
    return {labels or "": float(value) for labels, value in pattern.findall(text)}


def chain_worker(client: Client) -> Worker:
    """A worker of the chains, quick to try again after a fault."""
    return Worker(
        client,
        [chain_v1],
        logger=QUIET,
        max_concurrent_runs=30,
        max_backoff=timedelta(milliseconds=200),
    )


async def run_all(client: Client, labels: list[str]) -> None:
    """Start a chain per label and check each result."""
    handles = [await chain_v1.start(client, label) for label in labels]
    for label, handle in zip(labels, handles, strict=True):
        assert await handle.result(timeout=RESULT_TIMEOUT) == [f"{label}:{n}" for n in range(3)]


async def test_a_workers_calls_ride_one_channel(db_url: str, processes: LiveProcesses) -> None:
    server = await processes.start_server(db_url)
    labels = [f"ride-{i}" for i in range(20)]
    async with (
        Client(server.base_url, logger=QUIET) as client,
        Worker(client, [chain_v1], logger=QUIET, max_concurrent_runs=20),
    ):
        await run_all(client, labels)
    channels = await metric(server, "aiki_channels")
    assert channels['{event="opened"}'] == 1.0
    calls = (await metric(server, "aiki_channel_calls"))[""]
    # at least two task records and a transition per run, and the claims
    assert calls >= 3 * len(labels) + 1


async def test_a_workers_channel_reset_mid_run_loses_and_repeats_nothing(
    db_url: str, processes: LiveProcesses
) -> None:
    server = await processes.start_server(db_url)
    EXECUTED.clear()  # of the other database's half
    labels = [f"reset-{i}" for i in range(30)]
    async with (
        TcpRelay(server.port) as relay,
        Client(server.base_url, logger=QUIET) as client,
        Client(relay.base_url, logger=QUIET) as cut_off,
        chain_worker(cut_off),
    ):
        handles = [await chain_v1.start(client, label) for label in labels]

        async def cut_now_and_then() -> None:
            for _ in range(5):
                await anyio.sleep(0.1)
                relay.reset()

        async with anyio.create_task_group() as tg:
            tg.start_soon(cut_now_and_then)
            for label, handle in zip(labels, handles, strict=True):
                result = await handle.result(timeout=RESULT_TIMEOUT)
                assert result == [f"{label}:{n}" for n in range(3)]
        for handle in handles:
            detail = await handle.detail()
            assert detail.status is RunStatus.COMPLETED
            assert len(detail.tasks) == 3  # one record per call, none twice
    # the server never died: every record the worker sent was either taken or sent again
    # and taken as the same, so no body ran twice
    assert [EXECUTED[f"{label}:{n}"] for label in labels for n in range(3)] == [1] * 90
    assert (await metric(server, "aiki_channels"))['{event="opened"}'] > 1


async def test_a_server_killed_and_started_again_loses_nothing(
    db_url: str, processes: LiveProcesses
) -> None:
    server = await processes.start_server(db_url)
    labels = [f"restart-{i}" for i in range(30)]
    async with (
        Client(server.base_url, logger=QUIET) as client,
        chain_worker(client),
    ):
        handles = [await chain_v1.start(client, label) for label in labels]
        await anyio.sleep(0.2)
        server.kill()
        await server.wait()
        await processes.start_server(db_url, port=server.port)
        for label, handle in zip(labels, handles, strict=True):
            assert await handle.result(timeout=RESULT_TIMEOUT) == [f"{label}:{n}" for n in range(3)]
            assert len((await handle.detail()).tasks) == 3


async def test_a_revoked_key_cuts_the_worker_off(db_url: str, processes: LiveProcesses) -> None:
    server = await processes.start_server(db_url)
    key = await server.create_api_key("team-a")
    async with Client(server.base_url, api_key=key.key, logger=QUIET) as client:
        worker = Worker(client, [chain_v1], logger=QUIET)
        async with anyio.create_task_group() as tg:

            async def revoke_once_open() -> None:
                opened = '{event="opened"}'
                while (await metric(server, "aiki_channels")).get(opened) != 1:  # noqa: ASYNC110 - another process's counter
                    await anyio.sleep(0.05)
                await server.revoke_api_key(key.id)

            tg.start_soon(revoke_once_open)
            # idle in its long-polls, the worker learns it from the channel's close
            with anyio.fail_after(30), pytest.raises(AuthenticationError):
                await worker.run()
    channels = await metric(server, "aiki_channels")
    assert channels['{event="revoked"}'] == 1.0
    assert channels['{event="refused"}'] >= 1.0  # opened again: refused with the 401


async def test_a_cancelled_call_stops_on_the_server_and_is_not_answered(
    db_url: str, processes: LiveProcesses
) -> None:
    server = await processes.start_server(db_url)
    claim = ClaimRequest(
        worker_id="w",
        capabilities=[WorkflowCapability(workflow="nothing", version="1")],
        wait=timedelta(seconds=50),
    )
    async with raw_channel(server) as ws:
        body = claim.model_dump_json().encode()
        await ws.send(encode_request(ChannelRequest(1, "POST", "/claims", body)))
        await anyio.sleep(0.2)  # the long-poll is waiting
        await ws.send(encode_cancel(1))
        await ws.send(encode_request(ChannelRequest(2, "GET", "/workers", None)))
        # the next answer is the second call's: the first is never answered
        assert (await answer(ws))[:2] == (2, 200)
        requests = await metric(server, "aiki_http_requests")
        with anyio.fail_after(10):
            while '{method="POST",route="/api/v1/claims",status="499"}' not in requests:
                await anyio.sleep(0.05)
                requests = await metric(server, "aiki_http_requests")


async def test_a_long_poll_the_client_gives_up_stops_on_the_server(
    db_url: str, processes: LiveProcesses
) -> None:
    server = await processes.start_server(db_url)
    claim = ClaimRequest(
        worker_id="w",
        capabilities=[WorkflowCapability(workflow=chain_v1.workflow, version="1")],
        wait=timedelta(seconds=50),
    )
    async with Client(server.base_url, logger=QUIET) as client:
        with anyio.move_on_after(0.3):
            await client.claim(claim)  # a worker stopping: its claim is given up
        # a run started now is not claimed by the poll nobody waits for
        handle = await chain_v1.start(client, "after")
        async with chain_worker(client):
            assert await handle.result(timeout=RESULT_TIMEOUT) == [f"after:{n}" for n in range(3)]
    requests = await metric(server, "aiki_http_requests")
    assert requests['{method="POST",route="/api/v1/claims",status="499"}'] >= 1


async def test_hostile_frames_are_refused_and_harm_no_other_worker(
    db_url: str, processes: LiveProcesses
) -> None:
    server = await processes.start_server(db_url)
    async with (
        Client(server.base_url, logger=QUIET) as client,
        Worker(client, [chain_v1], logger=QUIET, max_concurrent_runs=10),
    ):
        work = anyio.create_task_group()
        async with work:
            work.start_soon(run_all, client, [f"steady-{i}" for i in range(40)])

            async with raw_channel(server) as ws:
                # a call it can read the id of: answered 400, the channel goes on
                await ws.send(b"5 TRACE /claims\n")
                assert (await answer(ws))[:2] == (5, 400)
                # not JSON, unknown route, over the body limit, a cancel of nothing
                await ws.send(encode_request(ChannelRequest(6, "POST", "/claims", b"{")))
                assert (await answer(ws)).status in (400, 422)
                await ws.send(encode_request(ChannelRequest(7, "GET", "/nowhere", None)))
                assert (await answer(ws)).status == 404
                big = b'{"x": "' + b"a" * (3 * 1024 * 1024) + b'"}'
                await ws.send(encode_request(ChannelRequest(8, "POST", "/claims", big)))
                assert (await answer(ws)).status == 413
                await ws.send(encode_cancel(12345))
                # the dashboard and the public routes are not under the API: 404
                await ws.send(encode_request(ChannelRequest(9, "GET", "/../health", None)))
                assert (await answer(ws)).status == 404
                await ws.send(encode_request(ChannelRequest(10, "GET", "/workers", None)))
                assert (await answer(ws)).status == 200

            frames: list[tuple[bytes | str, int]] = [
                (b"\x00\xff no line", 1007),
                ("text, not bytes", 1003),
            ]
            for frame, code in frames:
                async with raw_channel(server) as ws:
                    await ws.send(frame)
                    with pytest.raises(ConnectionClosed) as closed:
                        await ws.recv()
                    assert closed.value.rcvd is not None
                    assert closed.value.rcvd.code == code

            with pytest.raises(InvalidStatus) as refused:
                async with raw_channel(server, "/api/v1/elsewhere"):
                    pass
            assert refused.value.response.status_code == 403
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{server.base_url}/health")).status_code == 200
    channels = await metric(server, "aiki_channels")
    assert channels['{event="invalid"}'] == 2.0


async def test_a_call_with_a_long_target_is_answered_as_on_http_and_drops_no_other_call(
    db_url: str,
) -> None:
    """A run id of 5,000 characters (a caller's input, say) makes a request line HTTP
    reads and answers (404); on the channel it is answered too, and the long-poll beside
    it on the same channel goes on."""
    long_id = RunId("r" * 5000)
    async with embedded_server(db_url) as server:
        transport = httpx.ASGITransport(app=server.app)
        async with Client("http://aiki", transport=transport, channel=False) as plain:
            with pytest.raises(NotFoundError):
                await plain.run_handle(long_id).status()
        async with Client("http://aiki", transport=transport) as client:
            handle = await chain_v1.start(client, "long-target")
            waiting = anyio.Event()
            outcome: list[BaseException | RunStatus] = []

            async def wait_for_it() -> None:
                waiting.set()
                try:
                    outcome.append(await handle.wait_for_status([RunStatus.CANCELLED]))
                except Exception as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_it)
                await waiting.wait()
                await anyio.sleep(0.1)  # the long-poll is on the channel
                with pytest.raises(NotFoundError):
                    await client.run_handle(long_id).status()
                await handle.cancel("done")
            assert outcome == [RunStatus.CANCELLED]
