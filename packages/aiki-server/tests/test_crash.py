"""Crash safety: SIGKILL the server during a burst of starts; no acknowledged start is lost.

A real server process (`python -m aiki_server`) takes concurrent starts, each with a
unique reference id, and is killed with SIGKILL once ~150 have been acknowledged,
while the senders are still going. A new process on the same database must then
show every start that got a 2xx: by id, in the run list, with its history row, and
re-sending its reference id answers 200 `created=false` with the same run id.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiki_server.testing import ServerProcess
    from live_processes import LiveProcesses

pytestmark = pytest.mark.slow

SENDERS = 16
KILL_AFTER_ACKS = 150
MAX_STARTS = 5_000  # a bound on the burst should the kill never come
REQUEST_TIMEOUT = 10.0
WORKFLOW = "crash-burst"


def _start_body(reference_id: str) -> dict[str, Any]:
    return {
        "workflow": WORKFLOW,
        "version": "1",
        "reference_id": reference_id,
        "input": {"reference": reference_id, "pad": "x" * 200},
    }


@dataclass
class Burst:
    """What the senders saw: acknowledged starts, and starts with no answer."""

    acked: dict[str, str] = field(default_factory=dict)  # reference id -> run id
    unanswered: list[str] = field(default_factory=list)
    sent: int = 0
    killed_at: float | None = None


async def _burst(server: ServerProcess) -> Burst:
    """Concurrent starts until the process is SIGKILLed after KILL_AFTER_ACKS acks."""
    burst = Burst()
    limits = httpx.Limits(max_connections=SENDERS, max_keepalive_connections=SENDERS)

    def kill() -> None:
        if burst.killed_at is None:
            burst.killed_at = time.monotonic()
            os.kill(server.process.pid, signal.SIGKILL)

    async def sender(client: httpx.AsyncClient) -> None:
        while burst.sent < MAX_STARTS:
            reference_id = f"crash-{burst.sent:05d}"
            burst.sent += 1
            try:
                response = await client.post("/api/v1/runs", json=_start_body(reference_id))
            except httpx.TransportError:
                # the process is gone: this start may or may not have been committed
                assert burst.killed_at is not None, "a start failed before the kill"
                burst.unanswered.append(reference_id)
                return
            assert response.status_code == 201, response.text
            body = response.json()
            assert body["created"] is True, body
            assert body["run"]["reference_id"] == reference_id, body
            burst.acked[reference_id] = body["run"]["id"]
            if len(burst.acked) >= KILL_AFTER_ACKS:
                kill()

    with anyio.fail_after(60):
        async with (
            httpx.AsyncClient(
                base_url=server.base_url, timeout=REQUEST_TIMEOUT, limits=limits
            ) as client,
            anyio.create_task_group() as tg,
        ):
            for _ in range(SENDERS):
                tg.start_soon(sender, client)
    return burst


async def _all_runs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"workflow": WORKFLOW, "limit": 500}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get("/api/v1/runs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        runs += page["runs"]
        cursor = page["next_cursor"]
        if cursor is None:
            return runs


async def _for_each(items: list[str], check: Callable[[str], Awaitable[None]]) -> None:
    """Run `check(item)` for every item, SENDERS at a time."""
    pending = list(items)

    async def drain() -> None:
        while pending:
            await check(pending.pop())

    async with anyio.create_task_group() as tg:
        for _ in range(SENDERS):
            tg.start_soon(drain)


async def test_sigkill_during_start_burst_loses_no_acknowledged_start(
    db_url: str, processes: LiveProcesses
) -> None:
    first = await processes.start_server(db_url)
    burst = await _burst(first)
    returncode = await first.wait(timeout=10)
    assert burst.killed_at is not None, "the burst ended before the kill"
    assert returncode == -signal.SIGKILL, first.log_text()
    assert len(burst.acked) >= KILL_AFTER_ACKS
    # the kill landed mid-burst: requests were in flight and went unanswered
    assert burst.unanswered, "no start was in flight at the kill"

    second = await processes.start_server(db_url)
    async with httpx.AsyncClient(base_url=second.base_url, timeout=REQUEST_TIMEOUT) as client:
        with anyio.fail_after(60):
            runs = await _all_runs(client)
            by_reference = {run["reference_id"]: run["id"] for run in runs}
            assert len(by_reference) == len(runs), "a reference id started two runs"
            missing = {
                ref: run_id
                for ref, run_id in burst.acked.items()
                if by_reference.get(ref) != run_id
            }
            assert not missing, f"acknowledged starts lost by the crash: {missing}"
            # nothing appeared that was never sent
            sent = set(burst.acked) | set(burst.unanswered)
            assert set(by_reference) <= sent

            async def check_detail(reference_id: str) -> None:
                run_id = burst.acked[reference_id]
                response = await client.get(f"/api/v1/runs/{run_id}")
                assert response.status_code == 200, response.text
                detail = response.json()
                assert detail["id"] == run_id
                assert detail["reference_id"] == reference_id
                assert detail["status"] == "queued"
                assert detail["input"] == _start_body(reference_id)["input"]
                # the start's history row was committed with it
                assert [h["to_status"] for h in detail["history"]] == ["queued"], detail

            async def check_idempotent(reference_id: str) -> None:
                response = await client.post("/api/v1/runs", json=_start_body(reference_id))
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["created"] is False, body
                assert body["run"]["id"] == burst.acked[reference_id], body

            await _for_each(list(burst.acked), check_detail)
            await _for_each(list(burst.acked), check_idempotent)
            # a start that was in flight at the kill is either there or not, never twice
            runs_after = await _all_runs(client)
            assert len(runs_after) == len(runs)
