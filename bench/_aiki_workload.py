"""The Aiki side of `dbos_compare.py`: its workflows, and the worker process that runs them.

`dbos_compare.py` imports the workflow versions to start runs with the client, and
runs this file as the worker process:

    python bench/_aiki_workload.py --url http://127.0.0.1:PORT --concurrency 32

The workflows mirror `_dbos_workload.py`: one name per workload (so each count in the
database is its own check), each running `steps` tasks in sequence, every task
returning a small dict. The worker stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel
from aiki_task import task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, WorkflowVersion, workflow

# WorkflowRun stays a runtime import: the workflow reads its functions' annotations
VERSION = "1"


@task("step")
async def step(i: int) -> dict[str, Any]:
    """A task that returns a small dict."""
    return {"step": i, "ok": True, "label": f"step-{i}"}


async def _steps(run: WorkflowRun, count: int) -> int:
    total = 0
    for i in range(count):
        total += (await step.start(run, i))["step"]
    return total


@workflow("bench-warmup").v(VERSION)
async def warmup(run: WorkflowRun, count: int) -> int:
    """Warm-up runs."""
    return await _steps(run, count)


@workflow("bench-latency-1").v(VERSION)
async def latency_1(run: WorkflowRun, count: int) -> int:
    """The 1-task latency workload."""
    return await _steps(run, count)


@workflow("bench-latency-10").v(VERSION)
async def latency_10(run: WorkflowRun, count: int) -> int:
    """The 10-task latency workload."""
    return await _steps(run, count)


@workflow("bench-throughput").v(VERSION)
async def throughput(run: WorkflowRun, count: int) -> int:
    """The throughput workload."""
    return await _steps(run, count)


VERSIONS: list[WorkflowVersion[int, int]] = [warmup, latency_1, latency_10, throughput]


async def serve(url: str, concurrency: int) -> None:
    """One worker for every workload's version, until SIGTERM or SIGINT."""
    logger = ConsoleLogger(LogLevel.WARN)
    async with Client(url, logger=logger) as client:
        worker = Worker(client, VERSIONS, max_concurrent_runs=concurrency, logger=logger)
        await worker.run()


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description="The worker process of dbos_compare.py.")
    parser.add_argument("--url", required=True, help="the Aiki server's base URL")
    parser.add_argument("--concurrency", type=int, required=True, help="max_concurrent_runs")
    args = parser.parse_args()
    anyio.run(serve, args.url, args.concurrency)


if __name__ == "__main__":
    main()
