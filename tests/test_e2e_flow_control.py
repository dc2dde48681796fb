"""Flow control end to end: worker processes, server replicas, and the client's side.

The worker processes run `tests/flow_app.py`, whose task notes in a ledger when each
execution began and ended: the ledger shows which runs of a key executed at once.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

import flow_app
from aiki_client import Client
from aiki_core import (
    Concurrency,
    ConcurrencyKeyError,
    ConcurrencyStrategy,
    NotFoundError,
    PayloadValidationError,
)
from aiki_server.testing import embedded_server
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, workflow
from e2e_support import QUIET
from flow_app import Order, orders_v1, urgent_v1

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from live_processes import LiveProcesses

FLOW_APP = Path(__file__).with_name("flow_app.py")
RESULT_TIMEOUT = timedelta(seconds=60)


def ledger_lines(path: Path) -> list[tuple[str, int, float, float]]:
    """The ledger: (key, index, began, ended) per task execution."""
    out = []
    for line in path.read_text().splitlines():
        key, index, began, ended = line.split()
        out.append((key, int(index), float(began), float(ended)))
    return out


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (one that ends as another begins: not both)."""
    events = sorted(
        [(began, 1) for began, _ in intervals] + [(ended, -1) for _, ended in intervals]
    )
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


def test_most_at_once_counts_overlaps() -> None:
    assert most_at_once([(0, 1), (1, 2), (2, 3)]) == 1
    assert most_at_once([(0, 3), (1, 2), (1.5, 4)]) == 3


@pytest.mark.only_on("postgresql", "replicas share a database only on PostgreSQL")
async def test_three_workers_and_two_replicas_hold_a_key_limit(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    first = await processes.start_server(db_url)
    second = await processes.start_server(db_url)
    ledger = tmp_path / "ledger.txt"
    for url in (first.base_url, second.base_url, first.base_url):
        await processes.spawn(
            "worker",
            [sys.executable, str(FLOW_APP), "--url", url, "--ledger", str(ledger)],
        )
    customers = [f"customer-{n}" for n in range(5)]
    async with (
        Client(first.base_url, logger=QUIET) as one,
        Client(second.base_url, logger=QUIET) as two,
    ):
        handles = [
            await orders_v1.start((one, two)[i % 2], Order(customer=customers[i % 5], index=i))
            for i in range(200)
        ]
        results = [await handle.result(timeout=RESULT_TIMEOUT) for handle in handles]
    assert results == list(range(200))
    executions = ledger_lines(ledger)
    assert sorted(index for _, index, _, _ in executions) == list(range(200))
    by_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for key, _, began, ended in executions:
        by_key[key].append((began, ended))
    peaks = {key: most_at_once(intervals) for key, intervals in by_key.items()}
    assert set(peaks) == set(customers)
    assert all(peak <= flow_app.LIMIT for peak in peaks.values()), peaks
    # the limit was reached: the runs did execute side by side
    assert max(peaks.values()) == flow_app.LIMIT, peaks


@pytest.fixture
async def embedded(db_url: str) -> AsyncIterator[tuple[httpx.ASGITransport, Client]]:
    async with embedded_server(db_url) as server:
        transport = httpx.ASGITransport(app=server.app)
        async with Client("http://aiki.test", transport=transport, logger=QUIET) as client:
            yield transport, client


async def test_one_worker_slot_takes_runs_by_priority(
    embedded: tuple[httpx.ASGITransport, Client], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = embedded
    monkeypatch.setattr(flow_app.SETTINGS, "ledger", tmp_path / "ledger.txt")
    low = await orders_v1.start(client, Order(customer="a", index=0))
    urgent = await urgent_v1.start(client, Order(customer="b", index=1))
    highest = await orders_v1.start(client, Order(customer="c", index=2), priority=9)
    lowered = await urgent_v1.start(client, Order(customer="d", index=3), priority=0)
    assert [(await h.detail()).priority for h in (low, urgent, highest, lowered)] == [0, 7, 9, 0]
    assert (await low.detail()).concurrency_key == "a"
    assert (await urgent.detail()).concurrency_key is None
    async with Worker(client, flow_app.VERSIONS, max_concurrent_runs=1, logger=QUIET):
        for handle in (low, urgent, highest, lowered):
            await handle.result(timeout=RESULT_TIMEOUT)
    order = [index for _, index, _, _ in ledger_lines(tmp_path / "ledger.txt")]
    assert order == [2, 1, 0, 3]


async def test_limits_are_read_set_listed_and_cleared_by_the_client(
    embedded: tuple[httpx.ASGITransport, Client],
) -> None:
    _, client = embedded
    with pytest.raises(NotFoundError):
        await client.concurrency_limits.get("flow-orders")
    handle = await orders_v1.start(client, Order(customer="acme", index=0))
    declared = await client.concurrency_limits.get("flow-orders")
    assert (declared.limit, declared.source, declared.per_key) == (2, "code", True)
    assert declared.strategy is ConcurrencyStrategy.QUEUE
    changed = await client.concurrency_limits.set("flow-orders", limit=5, strategy="cancel_newest")
    assert (changed.limit, changed.source, changed.strategy) == (5, "operator", "cancel_newest")
    assert [item.workflow for item in (await client.concurrency_limits.list()).limits] == [
        "flow-orders"
    ]
    with pytest.raises(PayloadValidationError):
        await client.concurrency_limits.set("flow-orders", limit=0)
    cleared = await client.concurrency_limits.clear("flow-orders")
    assert cleared.limit == 5
    assert (await client.concurrency_limits.list()).limits == []
    page = await client.list_runs(concurrency_key="acme")
    assert [run.id for run in page.runs] == [handle.id]


bad_keys = workflow("flow-bad-keys")


def _key(order: Order) -> str:
    if order.index == 0:
        raise LookupError("no customer on file")
    if order.index == 1:
        return order.index  # type: ignore[return-value]
    return "k" * (order.index)


@bad_keys.v("1.0.0", concurrency=Concurrency(limit=1, key=_key))
async def bad_keys_v1(run: WorkflowRun, order: Order) -> int:
    """Never runs: its starts are refused where they are made."""
    return order.index


@pytest.mark.parametrize("index", [0, 1, 201])
async def test_a_key_that_cannot_be_computed_sends_nothing(index: int) -> None:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    async with Client("http://127.0.0.1:9", transport=httpx.MockTransport(record)) as offline:
        with pytest.raises(ConcurrencyKeyError) as caught:
            await bad_keys_v1.start(offline, Order(customer="x", index=index))
    assert sent == []
    assert caught.value.workflow == "flow-bad-keys"
    assert "flow-bad-keys" in caught.value.message


async def test_a_bad_key_or_priority_writes_no_run(
    embedded: tuple[httpx.ASGITransport, Client],
) -> None:
    _, client = embedded
    with pytest.raises(ConcurrencyKeyError):
        await bad_keys_v1.start(client, Order(customer="x", index=0))
    with pytest.raises(ValueError, match="priority"):
        await orders_v1.start(client, Order(customer="x", index=0), priority=10)
    assert (await client.list_runs()).runs == []


def test_flow_control_declarations_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="limit"):
        Concurrency(limit=0)
    with pytest.raises(ValueError, match="strategy"):
        Concurrency(limit=1, strategy="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="priority"):
        workflow("flow-checked").v("1.0.0", priority=10)
