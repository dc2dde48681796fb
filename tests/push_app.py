"""A workflow endpoint of the push tests: `aiki_worker.asgi_app` under uvicorn.

    python tests/push_app.py --url http://127.0.0.1:PORT --secret aiki_push_... \\
        --counters DIR --port N

Its workflow runs `size` steps in a row. Every execution of a step's body appends a
line to its counter file in DIR (`<key>-<index>.count`), so the tests count how often
each body ran across pushes and kills. The step at `block_at` blocks on its first
execution (until the process is killed, or the run is given back), and returns on the
next.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import anyio
import uvicorn
from pydantic import BaseModel

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel
from aiki_task import task
from aiki_worker import PushedRunApp, asgi_app
from aiki_workflow import WorkflowRun, workflow


@dataclass
class Settings:
    """What the process was started with."""

    counters: Path | None = None


SETTINGS = Settings()


def count(name: str) -> int:
    """Append a line to the counter file of `name`, durably; how many lines it now has."""
    if SETTINGS.counters is None:
        raise RuntimeError("no counter directory: run tasks through `main()`")
    path = SETTINGS.counters / f"{name}.count"
    with path.open("a") as file:
        file.write(f"{os.getpid()} {time.time():.6f}\n")
        file.flush()
        os.fsync(file.fileno())
    return len(path.read_text().splitlines())


class Steps(BaseModel):
    """`size` steps of the run `key`; the one at `block_at` blocks on its first execution."""

    key: str
    size: int = 3
    block_at: int | None = None


class Step(BaseModel):
    """Step `index` of the run `key`."""

    key: str
    index: int
    block: bool = False


@task("push-step")
async def push_step(item: Step) -> int:
    """Count this execution; block on the first one if asked; the square of the index."""
    executions = count(f"{item.key}-{item.index}")
    if item.block and executions == 1:
        await anyio.sleep(3600)
    return item.index * item.index


steps = workflow("push-steps")


@steps.v("1.0.0")
async def steps_v1(run: WorkflowRun, job: Steps) -> int:
    """Run the steps one after the other; the sum of their results."""
    total = 0
    for index in range(job.size):
        total += await push_step.start(
            run, Step(key=job.key, index=index, block=index == job.block_at)
        )
    return total


def app(url: str, secret: str) -> PushedRunApp:
    """The endpoint: a client made per event loop, the one workflow version, its secret."""
    return asgi_app(
        lambda: Client(url, logger=ConsoleLogger(LogLevel.INFO)),
        [steps_v1],
        [secret],
        heartbeat_interval=timedelta(seconds=1),
    )


def main() -> None:
    """Parse the command line and serve the endpoint."""
    parser = argparse.ArgumentParser(description="A workflow endpoint of the push tests.")
    parser.add_argument("--url", required=True, help="the server, http://127.0.0.1:PORT")
    parser.add_argument("--secret", required=True, help="the endpoint's push secret")
    parser.add_argument("--counters", required=True, type=Path, help="counter files go here")
    parser.add_argument("--port", required=True, type=int)
    args = parser.parse_args()
    SETTINGS.counters = args.counters
    uvicorn.run(app(args.url, args.secret), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
