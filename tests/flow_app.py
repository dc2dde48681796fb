"""The application of the flow control tests: a workflow limited per customer key.

Its versions are imported by the tests (to start runs) and run by worker processes:

    python tests/flow_app.py --url http://127.0.0.1:PORT --ledger FILE [--slots N]

Each execution of the `flow-work` task appends one line to the ledger, with one
`write` on a file opened with `O_APPEND` (atomic between processes for a short line):
`<key> <index> <start> <end>`, the times in seconds since the epoch, so a test sees
which runs of a key executed at once, across every worker process.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import anyio
from pydantic import BaseModel

from aiki_client import Client
from aiki_core import Concurrency, ConsoleLogger, LogLevel
from aiki_task import task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, workflow

LIMIT = 2
"""Runs of one key that may execute at once."""
WORK_TIME = 0.03
"""How long each task sleeps, in seconds."""


@dataclass
class Settings:
    """What the worker process was started with."""

    ledger: Path | None = None


SETTINGS = Settings()


class Order(BaseModel):
    """One unit of work of a customer."""

    customer: str
    index: int


def note(line: str) -> None:
    """Append `line` to the ledger in one write."""
    if SETTINGS.ledger is None:
        raise RuntimeError("no ledger: run tasks through `main()`")
    fd = os.open(SETTINGS.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@task("flow-work")
async def work(order: Order) -> int:
    """Sleep a little, then note when this execution began and ended."""
    began = time.time()
    await anyio.sleep(WORK_TIME)
    note(f"{order.customer} {order.index} {began:.6f} {time.time():.6f}\n")
    return order.index


orders = workflow("flow-orders")


@orders.v("1.0.0", concurrency=Concurrency(limit=LIMIT, key=lambda o: o.customer))
async def orders_v1(run: WorkflowRun, order: Order) -> int:
    """One task, at most `LIMIT` runs of a customer at a time."""
    return await work.start(run, order)


urgent = workflow("flow-urgent")


@urgent.v("1.0.0", priority=7)
async def urgent_v1(run: WorkflowRun, order: Order) -> int:
    """The same task, at priority 7 unless a start says otherwise."""
    return await work.start(run, order)


VERSIONS = [orders_v1, urgent_v1]


async def serve(url: str, slots: int) -> None:
    """Run a worker until SIGINT or SIGTERM."""
    async with Client(url, logger=ConsoleLogger(LogLevel.WARN)) as client:
        worker = Worker(
            client,
            VERSIONS,
            max_concurrent_runs=slots,
            heartbeat_interval=timedelta(seconds=1),
            max_backoff=timedelta(milliseconds=200),
            claim_wait=timedelta(seconds=1),
        )
        await worker.run()


def main() -> None:
    """Parse the command line and run the worker."""
    parser = argparse.ArgumentParser(description="A worker of the flow control tests.")
    parser.add_argument("--url", required=True, help="the server, http://127.0.0.1:PORT")
    parser.add_argument("--ledger", required=True, type=Path, help="the ledger file")
    parser.add_argument("--slots", type=int, default=10, help="max_concurrent_runs")
    args = parser.parse_args()
    SETTINGS.ledger = args.ledger
    anyio.run(serve, args.url, args.slots)


if __name__ == "__main__":
    main()
