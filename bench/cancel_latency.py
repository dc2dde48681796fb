"""How fast a cancel reaches a running task: on the worker's channel, and on plain HTTP.

A real server (`python -m aiki_server`) and a worker process (this file with
`--worker`) that holds each run in one task sleeping for an hour. The bench process
starts a run, waits until its task is running, cancels the run with its handle, and
times the moment the task's body sees the cancellation (the task sends the time in a
UDP datagram on loopback; one machine, one clock). 50 runs (`--runs`) one after
another, once with the worker's calls on its channel and once on plain HTTP
(`Client(channel=False)`), the baseline, each on a fresh database; p50 and p99 of
both, and their ratio.

Run it with `hatch run bench:cancel` (`--db sqlite|postgresql|both`, `--runs N`).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from _common import (
    BenchError,
    Latencies,
    add_database_options,
    exit_with_status,
    fresh_schema,
    logged_process,
    read_log,
    server_process,
)

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel
from aiki_task import task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, workflow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

GOAL = 0.2
"""Seconds within which a cancel should reach a running task."""
SEEN_TIMEOUT = 30.0
"""Seconds the bench waits for a task to start, or to see its cancel, before it fails."""


@task("hold")
async def hold(port: int) -> None:
    """Tell the bench (UDP `port` on loopback) it runs, sleep until cancelled, tell when."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as bench:
        bench.sendto(b"started", ("127.0.0.1", port))
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            bench.sendto(repr(time.time()).encode(), ("127.0.0.1", port))
            raise


@workflow("bench-cancel").v("1")
async def held(run: WorkflowRun, port: int) -> None:
    """One task that runs until the run is cancelled."""
    await hold.start(run, port)


async def serve(url: str, channel: bool) -> None:
    """The worker: one for `held`, on its channel or on plain HTTP."""
    logger = ConsoleLogger(LogLevel.WARN)
    async with Client(url, logger=logger, channel=channel) as client:
        await Worker(client, [held], logger=logger).run()


async def _measure(url: str, runs: int) -> Latencies:
    latencies = Latencies()
    async with (
        await anyio.create_udp_socket(local_host="127.0.0.1") as told,
        Client(url, logger=ConsoleLogger(LogLevel.WARN)) as client,
    ):
        port = told.extra(anyio.abc.SocketAttribute.local_port)
        for _ in range(runs):
            handle = await held.start(client, port)
            with anyio.fail_after(SEEN_TIMEOUT):
                started, _ = await told.receive()
            await anyio.sleep(0.05)  # settled: its heartbeats and directives polls are out
            asked = time.time()
            await handle.cancel()
            with anyio.fail_after(SEEN_TIMEOUT):
                seen, _ = await told.receive()
            latencies.samples.append(float(seen) - asked)
    return latencies


@asynccontextmanager
async def _database(kind: str, pg_url: str, folder: Path, name: str) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / name}.db"
        return
    async with fresh_schema(pg_url, prefix="bench_cancel") as url:
        yield url


async def _one(kind: str, opts: Options, folder: Path, channel: bool) -> Latencies:
    name = "channel" if channel else "plain"
    async with _database(kind, opts.pg_url, folder, name) as db_url:
        server_log = folder / f"server-{kind}-{name}.log"
        worker_log = folder / f"worker-{kind}-{name}.log"
        async with server_process(db_url, server_log) as server:
            command = [sys.executable, __file__, "--worker", server.base_url]
            if not channel:
                command.append("--plain")
            async with logged_process(command, worker_log):
                try:
                    return await _measure(server.base_url, opts.runs)
                except TimeoutError:
                    raise BenchError(
                        f"{kind}, {name}: a task did not start or see its cancel in"
                        f" {SEEN_TIMEOUT} s\n--- worker log ---\n{read_log(worker_log, 3000)}"
                    ) from None


@dataclass(frozen=True)
class Options:
    """What to measure."""

    db: str
    pg_url: str
    runs: int


def _ms(latencies: Latencies, p: float) -> str:
    return f"{latencies.percentile(p) * 1e3:6.1f}"


async def _main(opts: Options) -> int:
    kinds = ["sqlite", "postgresql"] if opts.db == "both" else [opts.db]
    print(f"cancel → the running task sees it, {opts.runs} runs one after another")
    with tempfile.TemporaryDirectory(prefix="aiki-cancel-bench-") as folder:
        for kind in kinds:
            channel = await _one(kind, opts, Path(folder), channel=True)
            plain = await _one(kind, opts, Path(folder), channel=False)
            met = "met" if channel.percentile(0.99) <= GOAL else "MISSED"
            print(
                f"  {kind:<10} channel p50 {_ms(channel, 0.5)} ms p99 {_ms(channel, 0.99)} ms"
                f" | plain HTTP p50 {_ms(plain, 0.5)} ms p99 {_ms(plain, 0.99)} ms"
                f" | channel ÷ plain p50 {channel.percentile(0.5) / plain.percentile(0.5):4.2f}"
                f" | p99 <= {GOAL * 1e3:.0f} ms: {met}"
            )
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point: `python bench/cancel_latency.py [options]`, or the worker process."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--worker"]:
        anyio.run(serve, args[1], "--plain" not in args)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_database_options(parser)
    parser.add_argument("--runs", type=int, default=50, help="runs cancelled per figure (50)")
    parsed = parser.parse_args(args)
    opts = Options(parsed.db, parsed.pg_url, parsed.runs)
    exit_with_status(lambda: anyio.run(_main, opts))


if __name__ == "__main__":
    main()
