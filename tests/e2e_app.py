"""The application of the end-to-end tests, written as a user of Aiki would write it.

Its workflows and tasks are imported by the tests (to start runs, typed) and run by
real worker processes:

    python tests/e2e_app.py --url http://127.0.0.1:PORT --counters DIR \\
        [--heartbeat-ms N] [--task-delay-ms N] [--max-backoff-ms N] [--api-key KEY]

With `AIKI_KEYS` in its environment (a key ring, see `aiki_crypto.KeyRing.from_env`)
the worker seals and opens every payload with `AesGcmCodec`.

Every execution of a task's body appends one line (`<pid> <time>`) to a counter
file of its own in DIR, `<name>.count`, and syncs it to disk: the tests count how
often each body ran, across processes and crashes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from pydantic import BaseModel

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel, RetryPolicy, WorkflowFailedError
from aiki_crypto import AesGcmCodec, KeyRing
from aiki_task import TaskContext, task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, event, workflow

if TYPE_CHECKING:
    from aiki_core.sdk import ExecutableVersion

FLAKY_FAILURES = 2
"""The flaky task fails this many times, then succeeds."""
SLOW_TASK_TIMEOUT = timedelta(milliseconds=300)
"""The timeout of the slow task, which sleeps far longer."""


@dataclass
class Settings:
    """What the worker process was started with."""

    counters: Path | None = None
    task_delay: float = 0.0


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


# -- one task returning a value -----------------------------------------------------------


class Greeting(BaseModel):
    """Whom to greet, and how often."""

    name: str
    times: int = 1


class Greeted(BaseModel):
    """What the greeting workflow returns."""

    message: str
    run_id: str


@task("greet")
async def greet(greeting: Greeting) -> str:
    """Say hello."""
    count(f"greet-{greeting.name}")
    return " ".join([f"hello {greeting.name}!"] * greeting.times)


hello = workflow("e2e-hello")


@hello.v("1.0.0")
async def hello_v1(run: WorkflowRun, greeting: Greeting) -> Greeted:
    """Greet once, through a task."""
    message = await greet.start(run, greeting)
    return Greeted(message=message, run_id=run.id)


# -- a task that fails twice, then succeeds ----------------------------------------------


class Job(BaseModel):
    """A unit of work, named so its counter file is its own."""

    key: str


@task("flaky", retry=RetryPolicy.fixed(max_attempts=5, delay=timedelta(milliseconds=100)))
async def flaky(job: Job, ctx: TaskContext) -> str:
    """Fail with a connection error on the first two attempts."""
    runs = count(f"flaky-{job.key}")
    if runs <= FLAKY_FAILURES:
        raise ConnectionError(f"the service of {job.key} is down (call {runs})")
    return f"{job.key} done on attempt {ctx.attempt}"


flaky_workflow = workflow("e2e-flaky")


@flaky_workflow.v("1.0.0")
async def flaky_v1(run: WorkflowRun, job: Job) -> str:
    """Run the flaky task until it succeeds."""
    return await flaky.start(run, job)


# -- a task that runs past its timeout ---------------------------------------------------


@task("slow", timeout=SLOW_TASK_TIMEOUT)
async def slow(job: Job) -> str:
    """Sleep much longer than the task's timeout allows."""
    count(f"slow-{job.key}")
    await anyio.sleep(30)
    return "too late"


timeout_workflow = workflow("e2e-timeout")


@timeout_workflow.v("1.0.0")
async def timeout_v1(run: WorkflowRun, job: Job) -> str:
    """Run the slow task (without retries: a timeout fails the run)."""
    return await slow.start(run, job)


# -- a workflow that raises --------------------------------------------------------------


class Lookup(BaseModel):
    """A product to price."""

    sku: str


PRICES = {"apple": 3, "pear": 4}

failing_workflow = workflow("e2e-failing")


@failing_workflow.v("1.0.0")
async def failing_v1(run: WorkflowRun, lookup: Lookup) -> int:
    """Price a product; an unknown one is a `ValueError` caused by a `KeyError`."""
    if lookup.sku not in PRICES:
        raise ValueError(f"no price for {lookup.sku!r}") from KeyError(lookup.sku)
    return PRICES[lookup.sku]


# -- twenty tasks in a row ---------------------------------------------------------------


class Batch(BaseModel):
    """How many steps to run."""

    size: int = 20


class Step(BaseModel):
    """Step `index` of `of`."""

    index: int
    of: int


def step_counter(index: int) -> str:
    """The counter name of step `index`."""
    return f"step-{index:02d}"


@task("step")
async def step(item: Step) -> int:
    """One step: takes --task-delay-ms, returns the square of its index."""
    count(step_counter(item.index))
    await anyio.sleep(SETTINGS.task_delay)
    return item.index * item.index


twenty = workflow("e2e-twenty")


@twenty.v("1.0.0")
async def twenty_v1(run: WorkflowRun, batch: Batch) -> list[int]:
    """Run `batch.size` steps one after the other, each a distinct task call."""
    return [await step.start(run, Step(index=i, of=batch.size)) for i in range(1, batch.size + 1)]


# -- durable waits: sleeps, events, children ----------------------------------------------


class Nap(BaseModel):
    """How long to sleep, how often."""

    key: str
    seconds: float
    times: int = 1


@task("note")
async def note(job: Job) -> str:
    """Count an execution and return its key."""
    count(f"note-{job.key}")
    return job.key


sleeper = workflow("e2e-sleeper")


@sleeper.v("1.0.0")
async def sleeper_v1(run: WorkflowRun, nap: Nap) -> list[bool]:
    """Sleep `times` times on one name (a task before each), saying which were woken."""
    woken = []
    for turn in range(nap.times):
        await note.start(run, Job(key=f"{nap.key}-{turn}"))
        slept = await run.sleep("nap", timedelta(seconds=nap.seconds))
        woken.append(slept.woken_early)
    return woken


class Approval(BaseModel):
    """Who approved."""

    by: str


approved = event("approved", Approval)
shipped = event("shipped", int)


class Wait(BaseModel):
    """A key, and how long to wait for the event."""

    key: str
    timeout_s: float | None = None


approval = workflow("e2e-approval")


@approval.v("1.0.0")
async def approval_v1(run: WorkflowRun, wait: Wait) -> str:
    """Note, wait for approval (maybe with a timeout), note again."""
    await note.start(run, Job(key=f"{wait.key}-before"))
    timeout = None if wait.timeout_s is None else timedelta(seconds=wait.timeout_s)
    got = await approved.wait(run, timeout=timeout)
    await note.start(run, Job(key=f"{wait.key}-after"))
    return "timed out" if got.data is None else f"approved by {got.data.by}"


both_events = workflow("e2e-both-events")


@both_events.v("1.0.0")
async def both_events_v1(run: WorkflowRun, key: str) -> str:
    """Wait for `approved` and `shipped` side by side."""
    approvers: list[str] = []
    parcels: list[int] = []

    async def approval() -> None:
        got = await approved.wait(run)
        assert got.data is not None
        approvers.append(got.data.by)

    async def shipment() -> None:
        got = await shipped.wait(run)
        assert got.data is not None
        parcels.append(got.data)

    async with anyio.create_task_group() as tg:
        tg.start_soon(approval)
        tg.start_soon(shipment)
    return f"{approvers[0]} shipped {parcels[0]}"


class Family(BaseModel):
    """A key for counters, how deep to nest children, and how the youngest ends."""

    key: str
    depth: int = 1
    fail: bool = False
    sleep_s: float = 0.0


family = workflow("e2e-family")


@family.v("1.0.0")
async def family_v1(run: WorkflowRun, member: Family) -> str:
    """Start a child one level down, if any, and report how it ended; the youngest works."""
    await note.start(run, Job(key=f"{member.key}-{member.depth}"))
    if member.depth == 0:
        if member.sleep_s:
            await run.sleep("linger", timedelta(seconds=member.sleep_s))
        if member.fail:
            raise LookupError(f"{member.key} found nothing")
        return "done"
    child = await family_v1.start_child(run, member.model_copy(update={"depth": member.depth - 1}))
    try:
        return f"child said {await child.result()}"
    except WorkflowFailedError as failed:
        return f"child failed: {failed.error.message}"


class Pausable(BaseModel):
    """A key and how long the first step takes (or until a gate file is there)."""

    key: str
    first_s: float
    gate: bool = False


@task("long-step")
async def long_step(pausable: Pausable) -> str:
    """Count, then take `first_s` seconds, or, with a gate, wait for `gate-<key>` to exist."""
    count(f"long-{pausable.key}")
    if not pausable.gate:
        await anyio.sleep(pausable.first_s)
        return "long done"
    assert SETTINGS.counters is not None
    while not (SETTINGS.counters / f"gate-{pausable.key}").exists():  # noqa: ASYNC110 - a file
        await anyio.sleep(0.02)
    return "long done"


pausable = workflow("e2e-pausable")


@pausable.v("1.0.0")
async def pausable_v1(run: WorkflowRun, job: Pausable) -> str:
    """A long step, then a short one."""
    first = await long_step.start(run, job)
    second = await note.start(run, Job(key=f"{job.key}-second"))
    return f"{first}, {second}"


@task("publish")
async def publish(url: str) -> str:
    """Hand a URL to the outside world (here: a counter file the test reads)."""
    count("publish")
    assert SETTINGS.counters is not None
    (SETTINGS.counters / "published.url").write_text(url)
    return url


hooked = workflow("e2e-webhook")


@hooked.v("1.0.0")
async def webhook_v1(run: WorkflowRun, key: str) -> str:
    """Mint a webhook for `approved`, publish it, and wait for the POST."""
    url = await run.webhook_url(approved, expires=timedelta(hours=1))
    await publish.start(run, url)
    got = await approved.wait(run)
    assert got.data is not None
    return f"approved by {got.data.by} through the webhook"


# -- a secret in every kind of payload ----------------------------------------------------


class Secret(BaseModel):
    """A key for counters, and a marker that must never reach the server in clear."""

    key: str
    marker: str


confided = event("confided", str)


@task("confide", retry=RetryPolicy.fixed(max_attempts=3, delay=timedelta(milliseconds=50)))
async def confide(secret: Secret, ctx: TaskContext) -> str:
    """Fail the first attempt with the marker in the error, then return it."""
    count(f"confide-{secret.key}")
    if ctx.attempt == 1:
        raise RuntimeError(f"the first attempt leaks {secret.marker}")
    return f"confided {secret.marker}"


secret_child = workflow("e2e-secret-child")


@secret_child.v("1.0.0")
async def secret_child_v1(run: WorkflowRun, secret: Secret) -> str:
    """Fail with the marker in the run's error."""
    raise LookupError(f"the child hides {secret.marker}")


secrets = workflow("e2e-secrets")


@secrets.v("1.0.0")
async def secrets_v1(run: WorkflowRun, secret: Secret) -> str:
    """Carry the marker through a task (result and error), a child's error and an event."""
    told = await confide.start(run, secret)
    child = await secret_child_v1.start_child(run, secret)
    try:
        await child.result()
    except WorkflowFailedError as failed:
        heard_from_child = failed.error.message
    else:
        raise AssertionError("the secret child must fail")
    got = await confided.wait(run)
    return f"{told}; {heard_from_child}; heard {got.data}"


# -- a slow and a fast task side by side; results larger than the server takes --------


@task("hold")
async def hold(job: Job) -> str:
    """Count an execution, then wait until the file `<key>.release` exists in the counters."""
    count(f"hold-{job.key}")
    assert SETTINGS.counters is not None
    release = SETTINGS.counters / f"{job.key}.release"
    while not release.exists():  # noqa: ASYNC110 - a file the test creates
        await anyio.sleep(0.02)
    return f"{job.key} held"


@task("quick")
async def quick(job: Job) -> str:
    """Count an execution and return at once."""
    count(f"quick-{job.key}")
    return f"{job.key} quick"


side_by_side = workflow("e2e-side-by-side")


@side_by_side.v("1.0.0")
async def side_by_side_v1(run: WorkflowRun, job: Job) -> list[str]:
    """Run `hold` and `quick` at once (`asyncio.gather`)."""
    both = asyncio.gather(hold.start(run, job), quick.start(run, job))  # noqa: TID251 - users do
    return list(await both)


class Big(BaseModel):
    """How many characters to return, and whether a task (or the workflow) returns them."""

    key: str
    size: int
    from_task: bool = False


@task("big")
async def big(job: Big) -> str:
    """Count an execution and return `job.size` characters."""
    count(f"big-{job.key}")
    return "x" * job.size


oversized = workflow("e2e-oversized")


@oversized.v("1.0.0")
async def oversized_v1(run: WorkflowRun, job: Big) -> str:
    """Return `job.size` characters, made by a task or by the workflow itself."""
    if job.from_task:
        return f"{len(await big.start(run, job))} characters"
    await note.start(run, Job(key=job.key))
    return "x" * job.size


VERSIONS: list[ExecutableVersion] = [
    hello_v1,
    flaky_v1,
    timeout_v1,
    failing_v1,
    twenty_v1,
    sleeper_v1,
    approval_v1,
    both_events_v1,
    family_v1,
    pausable_v1,
    webhook_v1,
    secret_child_v1,
    secrets_v1,
    side_by_side_v1,
    oversized_v1,
]


# -- the worker process ------------------------------------------------------------------


async def serve(
    url: str, heartbeat: timedelta, max_backoff: timedelta, api_key: str | None
) -> None:
    """Run a worker for every version until SIGINT or SIGTERM (or the key is refused)."""
    codec = AesGcmCodec(KeyRing.from_env()) if "AIKI_KEYS" in os.environ else None
    logger = ConsoleLogger(LogLevel.INFO)
    async with Client(url, api_key=api_key, codec=codec, logger=logger) as client:
        worker = Worker(
            client,
            VERSIONS,
            max_concurrent_runs=4,
            heartbeat_interval=heartbeat,
            max_backoff=max_backoff,
        )
        await worker.run()


def main() -> None:
    """Parse the command line and run the worker."""
    parser = argparse.ArgumentParser(description="A worker of the end-to-end tests.")
    parser.add_argument("--url", required=True, help="the server, http://127.0.0.1:PORT")
    parser.add_argument("--counters", required=True, type=Path, help="counter files go here")
    parser.add_argument("--heartbeat-ms", type=int, default=1000)
    parser.add_argument("--task-delay-ms", type=int, default=0, help="each step sleeps this long")
    parser.add_argument("--max-backoff-ms", type=int, default=500)
    parser.add_argument("--api-key", help="the worker's API key (default: none)")
    args = parser.parse_args()
    SETTINGS.counters = args.counters
    SETTINGS.task_delay = args.task_delay_ms / 1000
    anyio.run(
        serve,
        args.url,
        timedelta(milliseconds=args.heartbeat_ms),
        timedelta(milliseconds=args.max_backoff_ms),
        args.api_key,
    )


if __name__ == "__main__":
    main()
