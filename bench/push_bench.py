"""Push delivery against pull delivery: the same one-task runs, the same server, one script.

For each database (`--db`), the script measures two deliveries of the same workload,
one after the other, each on a fresh database with its own server process
(`python -m aiki_server`):

- **pull**: one worker process (`_aiki_workload.py`, `Worker` with
  `max_concurrent_runs` = `--concurrency`) claims the runs by long-poll;
- **push**: one endpoint process (`_aiki_workload.py --push-port`: `aiki_worker.asgi_app`
  under uvicorn) registered through the endpoints API with `max_in_flight` =
  `--concurrency`; the server's dispatcher claims the runs and POSTs them to it.

Per delivery: a warm-up, then `--latency-runs` sequential runs (start → result, p50
and p99), then `--runs` runs started by `--starters` senders at once (runs/s from the
first start to the last result, and CPU per run of the server, the executing process
and this script). Afterwards the database must hold every run completed, one
completed task per run and one claim per run (each run delivered once, so its task
ran once); a delivery whose check fails has its figures withheld.

Run it with `hatch run bench:push` (`--quick` for a smaller run, `--db sqlite` for one
database).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import httpx
from _aiki_workload import latency_1, throughput, warmup
from _common import (
    BenchError,
    Latencies,
    add_database_options,
    aiki_counts,
    all_at_once,
    check_counts,
    cpu_snapshot,
    exit_with_status,
    fresh_schema,
    logged_process,
    pg_unreachable,
    read_log,
    sequential,
    server_process,
)

from aiki_client import Client
from aiki_core import AikiError, ConsoleLogger, LogLevel
from aiki_server.testing import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiki_server.testing import LoggedProcess, ServerProcess

WORKLOAD = Path(__file__).resolve().with_name("_aiki_workload.py")
DELIVERIES = ("pull", "push")
PHASE_TIMEOUT = 600.0
WARMUP_RUNS = 20


@dataclass(frozen=True)
class Options:
    """What to measure and how much."""

    databases: list[str]
    pg_url: str
    runs: int
    latency_runs: int
    concurrency: int
    starters: int


def _options(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_database_options(parser)
    parser.add_argument("--runs", type=int, default=1000, help="throughput runs (1,000)")
    parser.add_argument(
        "--latency-runs", type=int, default=100, help="sequential runs for latency (100)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="the worker's max_concurrent_runs and the endpoint's max_in_flight (32)",
    )
    parser.add_argument("--starters", type=int, default=8, help="starts in flight (8)")
    parser.add_argument("--quick", action="store_true", help="200 throughput runs, 30 latency runs")
    args = parser.parse_args(argv)
    databases = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    runs, latency_runs = (200, 30) if args.quick else (args.runs, args.latency_runs)
    return Options(databases, args.pg_url, runs, latency_runs, args.concurrency, args.starters)


@dataclass
class Figures:
    """One delivery's figures on one database."""

    latency: Latencies = field(default_factory=Latencies)
    runs_per_second: float = 0.0
    cpu_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """CPU milliseconds per throughput run: server, executing process, this script."""


# -- the executing process ---------------------------------------------------------------


@asynccontextmanager
async def _pulling(
    server: ServerProcess, client: Client, opts: Options, log: Path
) -> AsyncIterator[LoggedProcess]:
    """A worker process claiming every workload's runs."""
    command = [
        sys.executable,
        str(WORKLOAD),
        f"--url={server.base_url}",
        f"--concurrency={opts.concurrency}",
    ]
    async with logged_process(command, log) as worker:
        yield worker


@asynccontextmanager
async def _pushed_to(
    server: ServerProcess, client: Client, opts: Options, log: Path
) -> AsyncIterator[LoggedProcess]:
    """An endpoint process, registered for every workload's runs, once it answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    created = await client.endpoints.create(
        url, workflows=[warmup, latency_1, throughput], max_in_flight=opts.concurrency
    )
    command = [
        sys.executable,
        str(WORKLOAD),
        f"--url={server.base_url}",
        f"--push-port={port}",
        f"--secret={created.secret}",
    ]
    async with logged_process(command, log) as endpoint:
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(30):
                while True:
                    try:
                        await http.get(url)  # 405: it serves POST only
                        break
                    except httpx.TransportError:
                        await anyio.sleep(0.05)
        yield endpoint


# -- one delivery ------------------------------------------------------------------------


async def _workloads(client: Client, opts: Options, pids: tuple[int, int]) -> Figures:
    figures = Figures()
    await sequential(client, warmup, 1, WARMUP_RUNS)
    figures.latency = await sequential(client, latency_1, 1, opts.latency_runs)
    before = cpu_snapshot(pids)
    _, seconds = await all_at_once(client, throughput, 1, opts.runs, opts.starters)
    after = cpu_snapshot(pids)
    server, executor, bench = (
        (b - a) / opts.runs * 1e3 for a, b in zip(before, after, strict=True)
    )
    figures.runs_per_second = opts.runs / seconds
    figures.cpu_ms = (server, executor, bench)
    return figures


async def _check(db_url: str, opts: Options) -> None:
    """Every run completed, with one completed task and one claim; else `BenchError`."""
    wrong = []
    for version, runs in ((warmup, WARMUP_RUNS), (latency_1, opts.latency_runs)):
        wrong.append(await _wrong(db_url, version.workflow, runs))
    wrong.append(await _wrong(db_url, throughput.workflow, opts.runs))
    failures = [w for w in wrong if w]
    if failures:
        raise BenchError("check failed: " + "; ".join(failures))


async def _wrong(db_url: str, workflow: str, runs: int) -> str | None:
    counts = await aiki_counts(db_url, workflow)
    want = {"runs": runs, "completed runs": runs, "completed tasks": runs, "run claims": runs}
    return check_counts(workflow, counts, want)


async def _delivery(db_url: str, delivery: str, opts: Options, folder: Path) -> Figures:
    """A server on `db_url` and one executing process; every workload; the checks."""
    server_log = folder / f"{delivery}-server.log"
    process_log = folder / f"{delivery}-{'endpoint' if delivery == 'push' else 'worker'}.log"
    executing = _pushed_to if delivery == "push" else _pulling
    try:
        async with (
            server_process(db_url, server_log) as server,
            Client(server.base_url, logger=ConsoleLogger(LogLevel.WARN)) as client,
            executing(server, client, opts, process_log) as process,
        ):
            with anyio.fail_after(PHASE_TIMEOUT):
                figures = await _workloads(client, opts, (server.pid, process.pid))
            if process.returncode is not None:
                raise BenchError(f"the {delivery} process exited with {process.returncode}")
    except* (AikiError, OSError, TimeoutError, BenchError) as group:
        errors = "; ".join(repr(e) for e in group.exceptions)
        raise BenchError(
            f"{delivery} failed: {errors}\n--- server log (tail) ---\n{read_log(server_log, 3000)}"
            f"\n--- {process_log.name} (tail) ---\n{read_log(process_log, 3000)}"
        ) from group
    await _check(db_url, opts)
    return figures


@asynccontextmanager
async def _database(kind: str, opts: Options, folder: Path, name: str) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / name}.db"
        return
    async with fresh_schema(opts.pg_url, prefix="bench_push") as url:
        yield url


async def _attempt(kind: str, delivery: str, opts: Options, folder: Path) -> Figures | None:
    """One delivery's figures, or `None` (printed why) if it failed or its check did."""
    figures = None
    try:
        async with _database(kind, opts, folder, delivery) as url:
            figures = await _delivery(url, delivery, opts, folder)
    except* BenchError as group:
        for error in group.exceptions:
            print(f"  {kind} {delivery}: FAILED, figures withheld: {error}")
    return figures


# -- the report --------------------------------------------------------------------------


def _report(kind: str, opts: Options, figures: dict[str, Figures | None]) -> None:
    print(
        f"\n{kind}: {opts.runs} one-task runs at once ({opts.starters} starts in flight),"
        f" {opts.latency_runs} sequential; concurrency {opts.concurrency}"
    )
    heading = f"{'':<8}{'runs/s':>10}{'p50 ms':>10}{'p99 ms':>10}"
    print(f"  {heading}   CPU ms/run server, executor, bench")
    for delivery, got in figures.items():
        if got is None:
            print(f"  {delivery:<8}{'FAILED':>10}")
            continue
        cpu = ", ".join(f"{ms:.2f}" for ms in got.cpu_ms)
        print(
            f"  {delivery:<8}{got.runs_per_second:10.0f}{got.latency.percentile(0.5) * 1e3:10.1f}"
            f"{got.latency.percentile(0.99) * 1e3:10.1f}   {cpu}"
        )
    push, pull = figures["push"], figures["pull"]
    if push is not None and pull is not None:
        print(
            f"  {'push/pull':<8}{push.runs_per_second / pull.runs_per_second:10.2f}"
            f"{push.latency.percentile(0.5) / pull.latency.percentile(0.5):10.2f}"
            f"{push.latency.percentile(0.99) / pull.latency.percentile(0.99):10.2f}"
        )


async def _main(opts: Options) -> int:
    status = 0
    with tempfile.TemporaryDirectory(prefix="aiki-push-bench-") as folder:
        for kind in opts.databases:
            if kind == "postgresql" and (why := await pg_unreachable(opts.pg_url)):
                print(f"postgresql: unreachable ({why}); skipped")
                status = 1
                continue
            figures = {d: await _attempt(kind, d, opts, Path(folder)) for d in DELIVERIES}
            _report(kind, opts, figures)
            if None in figures.values():
                status = 1
    return status


def main(argv: list[str] | None = None) -> None:
    """Entry point: `python bench/push_bench.py [options]`."""
    opts = _options(argv if argv is not None else sys.argv[1:])
    exit_with_status(lambda: anyio.run(_main, opts))


if __name__ == "__main__":
    main()
