"""Benchmark of `aiki_server` through its HTTP API, beside the raw commit rate of its database.

For SQLite and for PostgreSQL, this script

1. measures the raw commit rate of that database (one-row INSERT per commit: SQLite in
   WAL mode with `synchronous=FULL`; PostgreSQL through asyncpg on one connection and on
   eight concurrent ones), the physical limit of a durable engine on this machine;
2. starts a real server process (`python -m aiki_server --db ... --port ...`) on a fresh
   database (a scratch SQLite file, or a fresh PostgreSQL schema dropped afterwards);
3. measures starts/s: concurrent clients starting a fixed number of runs;
4. measures full cycles/s: a starter starts runs while workers loop claim → record one
   task result → complete, until every run completed;
5. counts the rows in the database: a figure is printed only if its check passes.

With `--api-key`, the scratch database gets an API key (`aiki-server keys create`)
once the server is up, and every request carries it: the figures with
authentication on.

Run it with `hatch run bench:server` (`--quick` for a smaller run, `--help` for more).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import asyncpg
import httpx
from _common import (
    BenchError,
    Latencies,
    add_database_options,
    aiki_counts,
    check_counts,
    cpu_seconds,
    exit_with_status,
    fresh_schema,
    pg_unreachable,
    server_process,
)

START_WORKFLOW = "bench-start"
CYCLE_WORKFLOW = "bench-cycle"
WARMUP_WORKFLOW = "bench-warmup"
PHASE_TIMEOUT = 150.0
REQUEST_TIMEOUT = 30.0


# -- options -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What to measure and how much."""

    databases: list[str]
    pg_url: str
    starts: int
    clients: int
    cycles: int
    workers: int
    starters: int
    raw_commits: int
    api_key: bool


def _options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="aiki-server starts/s and cycles/s beside the database's raw commit rate."
    )
    add_database_options(parser)
    parser.add_argument("--quick", action="store_true", help="a smaller run (seconds)")
    parser.add_argument("--starts", type=int, help="runs to start in (a) (default 2000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients in (a)")
    parser.add_argument("--cycles", type=int, help="runs taken through (b) (default 1000)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent workers in (b)")
    parser.add_argument(
        "--starters",
        type=int,
        default=4,
        help="start requests the starter keeps in flight in (b) (default 4)",
    )
    parser.add_argument("--raw-commits", type=int, help="commits for each raw rate (default 2000)")
    parser.add_argument(
        "--api-key",
        action="store_true",
        help="create an API key in the scratch database and send it with every request",
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    return Options(
        databases=["sqlite", "postgresql"] if args.db == "both" else [args.db],
        pg_url=args.pg_url,
        starts=args.starts or (300 if quick else 2000),
        clients=args.clients,
        cycles=args.cycles or (150 if quick else 1000),
        workers=args.workers,
        starters=args.starters,
        raw_commits=args.raw_commits or (500 if quick else 2000),
        api_key=bool(args.api_key),
    )


# -- raw commit rates --------------------------------------------------------------------


def sqlite_raw_commits(folder: Path, commits: int) -> float:
    """Commits/s of one-row INSERTs on a scratch file, WAL mode, synchronous=FULL."""
    path = folder / "raw.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, value TEXT NOT NULL)")
        began = time.perf_counter()
        for i in range(commits):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO raw (value) VALUES (?)", (f"row {i}",))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - began
        (count,) = conn.execute("SELECT count(*) FROM raw").fetchone()
    finally:
        conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if count != commits:
        raise BenchError(f"raw SQLite check failed: {count} rows, expected {commits}")
    return commits / elapsed


async def postgres_raw_commits(url: str, commits: int, connections: int) -> float:
    """Commits/s of one-row INSERTs (autocommit) over `connections` concurrent connections."""
    schema = f"bench_raw_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        await admin.execute(
            f"CREATE TABLE {schema}.raw (id BIGSERIAL PRIMARY KEY, value TEXT NOT NULL)"
        )
        conns = [await asyncpg.connect(url) for _ in range(connections)]
        try:
            base, extra = divmod(commits, connections)
            shares = [base + (i < extra) for i in range(connections)]

            async def insert(conn: asyncpg.Connection, count: int) -> None:
                for i in range(count):
                    await conn.execute(f"INSERT INTO {schema}.raw (value) VALUES ($1)", f"row {i}")

            began = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for conn, share in zip(conns, shares, strict=True):
                    tg.start_soon(insert, conn, share)
            elapsed = time.perf_counter() - began
        finally:
            for conn in conns:
                await conn.close()
        count = await admin.fetchval(f"SELECT count(*) FROM {schema}.raw")
        if count != commits:
            raise BenchError(f"raw PostgreSQL check failed: {count} rows, expected {commits}")
        return commits / elapsed
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


# -- measurements ------------------------------------------------------------------------


@dataclass
class CpuMeter:
    """CPU time the server process and this script spend during one measurement."""

    server_pid: int
    server: float = 0.0
    client: float = 0.0

    def __enter__(self) -> CpuMeter:
        self.server = -cpu_seconds(self.server_pid)
        self.client = -time.process_time()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server += cpu_seconds(self.server_pid)
        self.client += time.process_time()

    def per_run(self, runs: int) -> str:
        """Milliseconds of CPU per run: server / bench client."""
        return f"{self.server / runs * 1e3:.1f} / {self.client / runs * 1e3:.1f} ms"


async def _post(
    latencies: Latencies,
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    expected: int = 200,
) -> dict[str, Any]:
    """POST `body`, timing it; stop the benchmark on an unexpected status."""
    began = time.perf_counter()
    response = await client.post(path, json=body)
    latencies.samples.append(time.perf_counter() - began)
    if response.status_code != expected:
        raise BenchError(
            f"{response.request.method} {response.request.url} answered"
            f" {response.status_code}, expected {expected}: {response.text}"
        )
    answer: dict[str, Any] = response.json()
    return answer


def _start_body(workflow: str, reference_id: str) -> dict[str, Any]:
    return {
        "workflow": workflow,
        "version": "1",
        "reference_id": reference_id,
        "input": {"reference": reference_id, "items": [1, 2, 3]},
    }


async def _warm_up(client: httpx.AsyncClient, concurrency: int) -> None:
    """Open the connections and warm the server's code paths before timing anything."""
    latencies = Latencies()

    async def sender(i: int) -> None:
        for j in range(4):
            body = _start_body(WARMUP_WORKFLOW, f"warm-{i}-{j}")
            await _post(latencies, client, "/api/v1/runs", body, 201)

    async with anyio.create_task_group() as tg:
        for i in range(concurrency):
            tg.start_soon(sender, i)


@dataclass
class StartFigures:
    """Outcome of the starts/s measurement."""

    rate: float
    latency: Latencies
    cpu: CpuMeter | None = None


async def bench_starts(client: httpx.AsyncClient, runs: int, clients: int) -> StartFigures:
    """`clients` concurrent senders start `runs` runs between them; starts per second."""
    latency = Latencies()
    counter = iter(range(runs))

    async def sender() -> None:
        for i in counter:
            body = _start_body(START_WORKFLOW, f"start-{i}")
            await _post(latency, client, "/api/v1/runs", body, 201)

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(sender)
    return StartFigures(runs / (time.perf_counter() - began), latency)


@dataclass
class CycleFigures:
    """Outcome of the full-cycle measurement."""

    rate: float
    start: Latencies = field(default_factory=Latencies)
    claim: Latencies = field(default_factory=Latencies)
    record: Latencies = field(default_factory=Latencies)
    complete: Latencies = field(default_factory=Latencies)
    end_to_end: Latencies = field(default_factory=Latencies)
    empty_claims: int = 0
    cpu: CpuMeter | None = None


async def bench_cycle(
    client: httpx.AsyncClient, runs: int, workers: int, starters: int
) -> CycleFigures:
    """A starter starts `runs` runs; `workers` workers claim, record a task, complete each."""
    figures = CycleFigures(rate=0.0)
    counter = iter(range(runs))
    sent_at: dict[str, float] = {}
    completed = 0

    async def starter() -> None:
        for i in counter:
            reference_id = f"cycle-{i}"
            body = _start_body(CYCLE_WORKFLOW, reference_id)
            sent_at[reference_id] = time.perf_counter()
            await _post(figures.start, client, "/api/v1/runs", body, 201)

    async def worker(index: int) -> None:
        nonlocal completed
        claim = {
            "worker_id": f"bench-worker-{index}",
            "capabilities": [{"workflow": CYCLE_WORKFLOW, "version": "1"}],
            "max_runs": 1,
            "wait": 200,
        }
        while completed < runs:
            answer = await _post(figures.claim, client, "/api/v1/claims", claim)
            if not answer["runs"]:
                figures.empty_claims += 1
                continue
            claimed = answer["runs"][0]
            run = claimed["run"]
            run_id, revision = run["id"], run["revision"]
            task = {
                "revision": revision,
                "name": "step",
                "address": "step:0123456789abcdef",
                "occurrence": 0,
                "attempt": 1,
                "status": "completed",
                "input": claimed["input"],
                "result": {"ok": True, "reference": run["reference_id"]},
            }
            await _post(figures.record, client, f"/api/v1/runs/{run_id}/tasks", task)
            done = {"revision": revision, "action": {"kind": "complete", "result": {"ok": 1}}}
            await _post(figures.complete, client, f"/api/v1/runs/{run_id}/transition", done)
            completed += 1
            figures.end_to_end.samples.append(time.perf_counter() - sent_at[run["reference_id"]])

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(starters):
            tg.start_soon(starter)
        for index in range(workers):
            tg.start_soon(worker, index)
    figures.rate = runs / (time.perf_counter() - began)
    return figures


# -- one database ------------------------------------------------------------------------


@dataclass
class Report:
    """Everything measured on one database."""

    title: str
    raw: dict[str, float]
    starts: StartFigures | None = None
    cycle: CycleFigures | None = None
    failures: list[str] = field(default_factory=list)


async def bench_server(db_url: str, opts: Options, log: Path, report: Report) -> None:
    """Start a server on `db_url`, measure both figures, and check the rows they wrote."""
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    async with (
        server_process(db_url, log) as server,
        httpx.AsyncClient(
            base_url=server.base_url, timeout=REQUEST_TIMEOUT, limits=limits
        ) as client,
    ):
        if opts.api_key:
            key = await server.create_api_key("bench")
            client.headers["authorization"] = f"Bearer {key.key}"
        with anyio.fail_after(PHASE_TIMEOUT):
            await _warm_up(client, max(opts.clients, opts.workers))
            with CpuMeter(server.pid) as cpu:
                starts = await bench_starts(client, opts.starts, opts.clients)
            starts.cpu = cpu
        counts = await aiki_counts(db_url, START_WORKFLOW)
        # a start writes its run and one history row
        failure = check_counts("starts", counts, {"runs": opts.starts, "history rows": opts.starts})
        if failure:
            report.failures.append(failure)
        else:
            report.starts = starts
        with anyio.fail_after(PHASE_TIMEOUT), CpuMeter(server.pid) as cpu:
            cycle = await bench_cycle(client, opts.cycles, opts.workers, opts.starters)
        cycle.cpu = cpu
        counts = await aiki_counts(db_url, CYCLE_WORKFLOW)
        # history per run: queued, running, the task's completion, completed
        failure = check_counts(
            "cycle",
            counts,
            {
                "runs": opts.cycles,
                "completed runs": opts.cycles,
                "completed tasks": opts.cycles,
                "history rows": 4 * opts.cycles,
            },
        )
        if failure:
            report.failures.append(failure)
        else:
            report.cycle = cycle


async def bench_sqlite(opts: Options, folder: Path) -> Report:
    """Raw commit rate of SQLite, then the server on a scratch SQLite file."""
    raw = await anyio.to_thread.run_sync(sqlite_raw_commits, folder, opts.raw_commits)
    report = Report("SQLite (WAL, synchronous=FULL)", {"raw commits/s": raw})
    await bench_server(f"sqlite:///{folder / 'aiki.db'}", opts, folder / "sqlite.log", report)
    return report


async def bench_postgres(opts: Options, folder: Path) -> Report:
    """Raw commit rates of PostgreSQL, then the server on a fresh schema (dropped after)."""
    one = await postgres_raw_commits(opts.pg_url, opts.raw_commits, 1)
    eight = await postgres_raw_commits(opts.pg_url, opts.raw_commits, 8)
    report = Report(
        "PostgreSQL (asyncpg)", {"raw commits/s, 1 conn": one, "raw commits/s, 8 conns": eight}
    )
    async with fresh_schema(opts.pg_url) as db_url:
        await bench_server(db_url, opts, folder / "postgresql.log", report)
    return report


# -- output ------------------------------------------------------------------------------


def _print_report(report: Report, opts: Options) -> None:
    raws = list(report.raw.items())
    headers = ["figure", "value"] + [f"÷ {name.removeprefix('raw ')}" for name, _ in raws]
    rows: list[list[str]] = []
    for name, value in raws:
        rows.append([name, f"{value:,.0f}"] + [f"{value / r:.3f}" for _, r in raws])
    if report.starts is not None:
        rate = report.starts.rate
        rows.append(
            [f"starts/s ({opts.clients} clients, {opts.starts} runs)", f"{rate:,.0f}"]
            + [f"{rate / r:.3f}" for _, r in raws]
        )
    if report.cycle is not None:
        rate = report.cycle.rate
        rows.append(
            [f"cycles/s ({opts.workers} workers, {opts.cycles} runs)", f"{rate:,.1f}"]
            + [f"{rate / r:.3f}" for _, r in raws]
        )
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    print(f"\n== {report.title}")
    for row in [headers, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        print("  " + "  ".join(cells))
    latencies: list[tuple[str, Latencies]] = []
    if report.starts is not None:
        latencies.append(("start, in (a)", report.starts.latency))
    if report.cycle is not None:
        c = report.cycle
        latencies += [
            ("start, in (b)", c.start),
            ("claim (max_runs=1)", c.claim),
            ("task result", c.record),
            ("complete", c.complete),
            ("run: start sent → completed", c.end_to_end),
        ]
    if latencies:
        print("  latency p50 / p99:")
        for name, lat in latencies:
            print(f"    {name:<30} {lat.text()}")
    if report.cycle is not None:
        print(f"    (claims that found no run: {report.cycle.empty_claims})")
    cpus = [("(a) per start", report.starts), ("(b) per cycle", report.cycle)]
    if any(figures is not None and figures.cpu is not None for _, figures in cpus):
        print("  CPU server / bench client:")
        for name, figures in cpus:
            if figures is not None and figures.cpu is not None:
                runs = opts.starts if figures is report.starts else opts.cycles
                print(f"    {name:<30} {figures.cpu.per_run(runs)}")
    for failure in report.failures:
        print(f"  CHECK FAILED, figure withheld: {failure}")


async def _main(opts: Options) -> int:
    print(
        f"aiki-server bench: {opts.starts} starts by {opts.clients} clients;"
        f" {opts.cycles} cycles by {opts.workers} workers and {opts.starters} start senders;"
        f" {opts.raw_commits} raw commits;{' with an API key;' if opts.api_key else ''}"
        f" python {sys.version.split()[0]},"
        f" SQLite {sqlite3.sqlite_version}, {os.cpu_count()} cores"
    )
    failed = False
    with tempfile.TemporaryDirectory(prefix="aiki-bench-") as tmp:
        folder = Path(tmp)
        for database in opts.databases:
            began = time.perf_counter()
            if database == "sqlite":
                report = await bench_sqlite(opts, folder)
            else:
                problem = await pg_unreachable(opts.pg_url)
                if problem is not None:
                    print(f"\n== PostgreSQL at {opts.pg_url}: unreachable ({problem})")
                    failed = True
                    continue
                report = await bench_postgres(opts, folder)
            _print_report(report, opts)
            print(f"  ({time.perf_counter() - began:.1f} s)")
            failed = failed or bool(report.failures)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; exit 1 if a check failed or a database was unreachable."""
    options = _options(argv)
    exit_with_status(lambda: anyio.run(_main, options))


if __name__ == "__main__":
    main()
