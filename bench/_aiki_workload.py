"""Aiki's benchmark workflows, and the process that executes them (pulling or pushed to).

`peers_compare.py` and `push_bench.py` import the workflow versions to start runs with
the client, and run this file as the worker process:

    python bench/_aiki_workload.py --url http://127.0.0.1:PORT --concurrency 32

or, for push delivery, as a workflow endpoint (`aiki_worker.asgi_app` under uvicorn,
on 127.0.0.1) whose runs the server pushes, signed with `SECRET`:

    python bench/_aiki_workload.py --url http://127.0.0.1:PORT --push-port N --secret SECRET

The workflows mirror `_dbos_workload.py`: one name per workload (so each count in the
database is its own check), each running `steps` tasks in sequence, every task
returning a small dict. The process stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio
import uvicorn

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel
from aiki_task import task
from aiki_worker import Worker, asgi_app
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


def serve_pushes(url: str, port: int, secret: str) -> None:
    """An endpoint for every workload's version on 127.0.0.1:`port`, until SIGTERM."""
    logger = ConsoleLogger(LogLevel.WARN)
    app = asgi_app(lambda: Client(url, logger=logger), VERSIONS, [secret], logger=logger)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description="The worker process of Aiki's benchmarks.")
    parser.add_argument("--url", required=True, help="the Aiki server's base URL")
    parser.add_argument("--concurrency", type=int, help="max_concurrent_runs of a worker")
    parser.add_argument("--push-port", type=int, help="serve pushed runs on this port")
    parser.add_argument("--secret", help="the endpoint's push secret (with --push-port)")
    args = parser.parse_args()
    if args.push_port is not None and args.secret:
        serve_pushes(args.url, args.push_port, args.secret)
    elif args.concurrency is not None:
        anyio.run(serve, args.url, args.concurrency)
    else:
        parser.error("either --concurrency, or --push-port with --secret")


if __name__ == "__main__":
    main()
