"""The application of the chaos run: its workflows, its ledger, and its worker program.

Run as a worker process by the driver (`chaos_driver.py`):

    python tests/chaos/chaos_app.py --url http://127.0.0.1:PORT --ledger DIR \\
        --http-log FILE [--probe] [--heartbeat-ms N] [--max-runs N]

`chaos-mixed` is the workload: five tasks with side effects, a durable sleep, two
tasks at once (a slow one beside a fast one), an event sent by the driver, and a
child run. Its result is a pure function of its input and of the event's value
(`expected_result`), so the driver can tell a right result from a wrong one.
`chaos-probe` (pool `probe`) is one task; the driver times how soon a worker attached
to the other server replica picks it up.

Every execution of a task's body appends a line to this process's ledger file, with
`O_APPEND` and `fsync`, outside the engine: a `start` line before the side effect
and a `finish` line once it is done. The ledger is the ground truth of what ran: a
line is on disk before the engine could know of it.

Every answer of 500 or more, and every request that could not be carried, is
appended to the `--http-log` file by `RecordingHttp`, so the driver counts the 5xx
its workers saw without parsing their logs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from pydantic import BaseModel

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel, ServerUnavailableError
from aiki_core.wire import DEFAULT_POOL
from aiki_task import TaskContext, task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, event, workflow

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiki_client._http import Answer, Http
    from aiki_core import Logger
    from aiki_core.sdk import ExecutableVersion

PROBE_POOL = "probe"
CHARGE_SECONDS = 2.5
"""The slow task: long enough that worker kills often land while it runs, well after
the fast task beside it finished (more than `Plan.ack_grace`)."""
QUICK_SECONDS = 0.05
"""Every other task's side effect takes this long."""
CONTACT_GAP = 2.0
"""Seconds without an answer that `RecordingHttp` records as a contact gap."""


# -- the ledger --------------------------------------------------------------------------


@dataclass
class _Ledger:
    """This process's ledger file, opened once by `main()`."""

    fd: int | None = None


_LEDGER = _Ledger()


def append_line(fd: int, record: dict[str, object]) -> None:
    """Append one JSON line with a single `write` (atomic with `O_APPEND`), then `fsync`."""
    os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
    os.fsync(fd)


def open_append(path: Path) -> int:
    """A descriptor that appends to `path` (created if need be)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


async def side_effect(ctx: TaskContext, key: str, seconds: float) -> None:
    """The side effect of a task body: ledger `start`, `seconds` of work, ledger `finish`."""
    if _LEDGER.fd is None:
        raise RuntimeError("no ledger: run the tasks through `main()`")
    line: dict[str, object] = {
        "run": ctx.run_id,
        "key": key,
        "task": ctx.task_name,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "exec": uuid.uuid4().hex,
    }
    append_line(_LEDGER.fd, {"k": "start", "t": time.time(), **line})
    await anyio.sleep(seconds)
    append_line(_LEDGER.fd, {"k": "finish", "t": time.time(), **line})


# -- what clients saw --------------------------------------------------------------------


class RecordingHttp:
    """Wraps a client's HTTP path; records 5xx answers, failed requests, and silences.

    Appends a line to its file for every 5xx answer and every request that could not
    be carried, and one for every *contact gap*: a span of more than `CONTACT_GAP`
    seconds without any answer below 500 (while a worker holds runs it heartbeats
    every second, so a gap that long means its server could not hear it: its claims
    may have gone idle).

    The client has no hook for this: the chaos run reaches into its private `_http`
    (its one replica: the channel, or plain requests where there is none), so what is
    counted is exactly what the real network path (not a stand-in transport) saw.
    """

    def __init__(self, inner: Http, base_url: str, role: str, log: Path) -> None:
        self._inner = inner
        self._base_url = base_url
        self._role = role
        self._fd = open_append(log)
        self._last_answer = time.time()

    async def send(
        self, method: str, path: str, body: bytes | None, params: Sequence[tuple[str, str]]
    ) -> Answer:
        """Send through the wrapped path; record the answer if it is a 5xx or none."""
        try:
            answer = await self._inner.send(method, path, body, params)
        except ServerUnavailableError as exc:
            self._record(method, path, None, str(exc)[:300])
            self._silence()
            raise
        if answer.status >= 500:
            self._record(method, path, answer.status, answer.body[:300].decode(errors="replace"))
            self._silence()
        else:
            self._silence()
            self._last_answer = time.time()
        return answer

    def _silence(self) -> None:
        """Record the contact gap so far, if any: again at each failure, so a gap cut
        short by a SIGKILL is on file up to the kill (give or take a heartbeat)."""
        if time.time() - self._last_answer > CONTACT_GAP:
            self._record("-", "-", None, "contact gap", gap_from=self._last_answer)

    async def aclose(self) -> None:
        """Close the wrapped path and the file."""
        await self._inner.aclose()
        os.close(self._fd)

    def _record(
        self, method: str, path: str, status: int | None, text: str, **extra: object
    ) -> None:
        append_line(
            self._fd,
            {
                "t": time.time(),
                "pid": os.getpid(),
                "role": self._role,
                "url": self._base_url,
                "method": method,
                "path": path,
                "status": status,
                "text": text,
                **extra,
            },
        )


def recording_client(url: str, role: str, http_log: Path, logger: Logger) -> Client:
    """A `Client` of `url` whose 5xx answers and failed requests go to `http_log`."""
    client = Client(url, logger=logger)
    replicas = client._http.replicas
    replicas[0] = RecordingHttp(replicas[0], url, role, http_log)
    return client


# -- the workload ------------------------------------------------------------------------


class Order(BaseModel):
    """A run's input: its key (the reference id) and a number the results derive from."""

    key: str
    n: int


class Receipt(BaseModel):
    """What the last task puts together."""

    key: str
    reserved: int
    charged: int
    notified: int
    approved: int
    shipped: int


def event_value(n: int) -> int:
    """The value the driver sends as `chaos-approved` to the run of `n`."""
    return (n * 31) % 97


def receipt_text(receipt: Receipt) -> str:
    """The result of a run, from its parts."""
    return (
        f"{receipt.key}: reserved {receipt.reserved}, charged {receipt.charged},"
        f" notified {receipt.notified}, approved {receipt.approved}, shipped {receipt.shipped}"
    )


def expected_result(order: Order) -> str:
    """The result a run of `order` must end with, once it got its event."""
    n = order.n
    return receipt_text(
        Receipt(
            key=order.key,
            reserved=3 * n,
            charged=n + 7,
            notified=2 * n,
            approved=event_value(n),
            shipped=n * n,
        )
    )


def cool_off(n: int) -> timedelta:
    """The durable sleep of the run of `n`: 0.2 s to 1.8 s."""
    return timedelta(seconds=0.2 + (n % 5) * 0.4)


@task("chaos-reserve")
async def reserve(order: Order, ctx: TaskContext) -> int:
    """First task."""
    await side_effect(ctx, order.key, QUICK_SECONDS)
    return 3 * order.n


@task("chaos-charge")
async def charge(order: Order, ctx: TaskContext) -> int:
    """The slow task, run beside `notify`."""
    await side_effect(ctx, order.key, CHARGE_SECONDS)
    return order.n + 7


@task("chaos-notify")
async def notify(order: Order, ctx: TaskContext) -> int:
    """The fast task, run beside `charge`: done long before it."""
    await side_effect(ctx, order.key, QUICK_SECONDS)
    return 2 * order.n


@task("chaos-ship")
async def ship(order: Order, ctx: TaskContext) -> int:
    """The child's task."""
    await side_effect(ctx, order.key, QUICK_SECONDS)
    return order.n * order.n


@task("chaos-receipt")
async def receipt(parts: Receipt, ctx: TaskContext) -> str:
    """Last task: the run's result."""
    await side_effect(ctx, parts.key, QUICK_SECONDS)
    return receipt_text(parts)


approved = event("chaos-approved", int)

shipping = workflow("chaos-shipping")


@shipping.v("1.0.0")
async def shipping_v1(run: WorkflowRun, order: Order) -> int:
    """The child: a task, then a short durable sleep."""
    shipped = await ship.start(run, order)
    await run.sleep("transit", timedelta(seconds=0.3))
    return shipped


mixed = workflow("chaos-mixed")


@mixed.v("1.0.0")
async def mixed_v1(run: WorkflowRun, order: Order) -> str:
    """Reserve, sleep, charge beside notify, wait for approval, ship in a child, receipt."""
    reserved = await reserve.start(run, order)
    await run.sleep("cool-off", cool_off(order.n))
    both: dict[str, int] = {}

    async def charging() -> None:
        both["charged"] = await charge.start(run, order)

    async def notifying() -> None:
        both["notified"] = await notify.start(run, order)

    async with anyio.create_task_group() as group:
        group.start_soon(charging)
        group.start_soon(notifying)
    got = await approved.wait(run)
    if got.data is None:
        raise RuntimeError("the approval came without its value")
    child = await shipping_v1.start_child(run, order)
    shipped = await child.result()
    parts = Receipt(
        key=order.key,
        reserved=reserved,
        charged=both["charged"],
        notified=both["notified"],
        approved=got.data,
        shipped=shipped,
    )
    return await receipt.start(run, parts)


@task("chaos-probe")
async def probe_task(key: str, ctx: TaskContext) -> str:
    """Ledger the moment a probe reached a worker."""
    await side_effect(ctx, key, 0.0)
    return key


probe = workflow("chaos-probe")


@probe.v("1.0.0")
async def probe_v1(run: WorkflowRun, key: str) -> str:
    """One task, nothing else: its ledger line times a cross-replica wake-up."""
    return await probe_task.start(run, key)


WORKLOAD: list[ExecutableVersion] = [mixed_v1, shipping_v1]


# -- the worker process ------------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    """Run one worker (the workload's, or the probe's) until SIGTERM or SIGKILL."""
    logger = ConsoleLogger(LogLevel.INFO)
    async with recording_client(args.url, "worker", args.http_log, logger) as client:
        worker = Worker(
            client,
            [probe_v1] if args.probe else WORKLOAD,
            pools=[PROBE_POOL if args.probe else DEFAULT_POOL],
            max_concurrent_runs=args.max_runs,
            heartbeat_interval=timedelta(milliseconds=args.heartbeat_ms),
            max_backoff=timedelta(milliseconds=500),
            logger=logger,
        )
        await worker.run()


def main() -> None:
    """Parse the command line, open the ledger, run the worker."""
    parser = argparse.ArgumentParser(description="A worker of the chaos run.")
    parser.add_argument("--url", required=True, help="the server, http://127.0.0.1:PORT")
    parser.add_argument("--ledger", required=True, type=Path, help="ledger files go here")
    parser.add_argument("--http-log", required=True, type=Path, help="5xx answers go here")
    parser.add_argument("--probe", action="store_true", help="serve the probe pool only")
    parser.add_argument("--heartbeat-ms", type=int, default=1000)
    parser.add_argument("--max-runs", type=int, default=30)
    args = parser.parse_args()
    _LEDGER.fd = open_append(args.ledger / f"ledger-{os.getpid()}.jsonl")
    anyio.run(serve, args)


if __name__ == "__main__":
    main()
