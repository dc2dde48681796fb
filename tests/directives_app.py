"""Workflows whose tasks see their cancellation, run by a worker with the default heartbeat.

    python tests/directives_app.py --url http://127.0.0.1:PORT --counters DIR

The worker heartbeats every 30 s (the default), so whatever it learns sooner it
learns from its directives poll. A cancelled plain task's thread is reported
abandoned after 1 s. Counters are `e2e_app`'s: one line per event in `<name>.count`.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from pathlib import Path

import anyio
from pydantic import BaseModel

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel
from aiki_task import TaskContext, task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, workflow
from e2e_app import SETTINGS, count

CANCEL_GRACE = timedelta(seconds=1)
"""How long a cancelled plain task's thread may run on before it is reported abandoned."""


class Job(BaseModel):
    """A key for the counters."""

    key: str


def gate_open(key: str) -> bool:
    """Whether the test created the file `gate-<key>`."""
    assert SETTINGS.counters is not None
    return (SETTINGS.counters / f"gate-{key}").exists()


@task("waits-async")
async def waits_async(job: Job) -> str:
    """Count, then wait for an hour, counting the cancellation that ends it."""
    count(f"started-{job.key}")
    try:
        await anyio.sleep(3600)
    except anyio.get_cancelled_exc_class():
        count(f"cancelled-{job.key}")
        raise
    return "slept"


@task("polls-cancelled")
def polls_cancelled(job: Job, ctx: TaskContext) -> str:
    """Count, then work in small steps until the attempt is cancelled."""
    count(f"started-{job.key}")
    while not ctx.cancelled:
        time.sleep(0.02)
    count(f"stopped-{job.key}")
    ctx.raise_if_cancelled()
    return "never"


@task("ignores-cancelled")
def ignores_cancelled(job: Job) -> str:
    """Count, then work on until the gate opens, whatever happens to the attempt."""
    count(f"started-{job.key}")
    while not gate_open(job.key):
        time.sleep(0.02)
    count(f"finished-{job.key}")
    return "finished"


@task("gated")
async def gated(job: Job) -> str:
    """Count, then wait for the gate."""
    count(f"started-{job.key}")
    while not gate_open(job.key):  # noqa: ASYNC110 - a file, no event
        await anyio.sleep(0.02)
    return "through"


@task("after")
async def after(job: Job) -> str:
    """Count: the step after the first."""
    count(f"after-{job.key}")
    return "after"


cancellable = workflow("directives-cancellable")


@cancellable.v("1")
async def cancellable_v1(run: WorkflowRun, job: Job) -> str:
    """One long step (which one by the key's prefix), then another."""
    kind = job.key.partition("-")[0]
    long = {"async": waits_async, "polls": polls_cancelled, "ignores": ignores_cancelled}
    first = await long.get(kind, gated).start(run, job)
    return f"{first}, {await after.start(run, job)}"


async def serve(url: str) -> None:
    """Run the worker until SIGINT or SIGTERM, heartbeating at the default interval."""
    async with Client(url, logger=ConsoleLogger(LogLevel.INFO)) as client:
        await Worker(client, [cancellable_v1], cancel_grace=CANCEL_GRACE).run()


def main() -> None:
    """Parse the command line and run the worker."""
    parser = argparse.ArgumentParser(description="A worker of the directives tests.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--counters", required=True, type=Path)
    args = parser.parse_args()
    SETTINGS.counters = args.counters
    anyio.run(serve, args.url)


if __name__ == "__main__":
    main()
