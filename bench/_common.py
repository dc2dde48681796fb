"""What the benchmarks under `bench/` share: processes, percentiles, PostgreSQL, row counts.

The scripts run as `python bench/<script>.py`, so this folder is on `sys.path` and they
import this module as `_common`.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import sys
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, NoReturn

import anyio
import asyncpg

from aiki_server.testing import ServerStartError, start_process, start_server

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence
    from pathlib import Path

    from aiki_client import Client
    from aiki_core.sdk import WorkflowRunHandle
    from aiki_server.testing import LoggedProcess, ServerProcess
    from aiki_workflow import WorkflowVersion

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
RESULT_TIMEOUT = timedelta(seconds=120)


class BenchError(Exception):
    """The benchmark cannot go on: a process failed, or a measurement is wrong."""


def default_pg_url() -> str:
    """`AIKI_TEST_POSTGRES_URL`, else the test database on localhost."""
    return os.environ.get("AIKI_TEST_POSTGRES_URL", DEFAULT_PG_URL)


# -- processes ---------------------------------------------------------------------------


def add_database_options(parser: argparse.ArgumentParser) -> None:
    """The `--db` and `--pg-url` options every benchmark takes."""
    parser.add_argument(
        "--db",
        choices=["sqlite", "postgresql", "both"],
        default="both",
        help="which database to measure (default: both)",
    )
    parser.add_argument(
        "--pg-url",
        default=default_pg_url(),
        help=f"PostgreSQL URL [AIKI_TEST_POSTGRES_URL, default {DEFAULT_PG_URL}]",
    )


@asynccontextmanager
async def server_process(db_url: str, log: Path) -> AsyncIterator[ServerProcess]:
    """A live `python -m aiki_server` on `db_url`; stopped (SIGTERM, then SIGKILL) on exit."""
    try:
        server = await start_server(db_url, log=log)
    except ServerStartError as exc:
        raise BenchError(str(exc)) from None
    try:
        yield server
    finally:
        await server.aclose()


@asynccontextmanager
async def logged_process(
    command: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[LoggedProcess]:
    """A child process writing stdout and stderr to `log`; stopped on exit.

    `env` adds to (or overrides) this process's environment.
    """
    process = await start_process(command, log, env=env)
    try:
        yield process
    finally:
        await process.aclose()


def read_log(log: Path, tail: int | None = None) -> str:
    """The text of a process's log; only its last `tail` characters if given."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return text if tail is None else text[-tail:]


def cpu_snapshot(pids: Sequence[int]) -> list[float]:
    """CPU seconds so far of each process in `pids`, then of this one."""
    return [*(cpu_seconds(pid) for pid in pids), time.process_time()]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux `/proc`; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            stat = stat_file.read()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()  # fields from the 3rd on: utime is the 14th
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- figures -----------------------------------------------------------------------------


@dataclass
class Latencies:
    """Latencies of one kind of operation, in seconds."""

    samples: list[float] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        """The nearest-rank `p` quantile (0 < p <= 1)."""
        ordered = sorted(self.samples)
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    def text(self) -> str:
        """p50 / p99 in milliseconds."""
        if not self.samples:
            return "-"
        return f"{self.percentile(0.5) * 1e3:.1f} / {self.percentile(0.99) * 1e3:.1f} ms"


# -- runs through the client -------------------------------------------------------------


async def sequential(
    client: Client, version: WorkflowVersion[int, int], steps: int, runs: int
) -> Latencies:
    """Start → result of `runs` runs of `steps` tasks (`_aiki_workload`'s), one after another."""
    latency = Latencies()
    expected = steps * (steps - 1) // 2
    for _ in range(runs):
        began = time.perf_counter()
        handle = await version.start(client, steps)
        result = await handle.result(timeout=RESULT_TIMEOUT)
        latency.samples.append(time.perf_counter() - began)
        if result != expected:
            raise BenchError(f"{version!r} returned {result}, expected {expected}")
    return latency


async def all_at_once(
    client: Client, version: WorkflowVersion[int, int], steps: int, runs: int, starters: int
) -> tuple[float, float]:
    """Start `runs` runs with `starters` senders, then wait for each result.

    Seconds from the first start to the last one sent, and to the last result.
    """
    handles: list[WorkflowRunHandle[int] | None] = [None] * runs
    counter = iter(range(runs))

    async def sender() -> None:
        for i in counter:
            handles[i] = await version.start(client, steps)

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(starters):
            tg.start_soon(sender)
    started = time.perf_counter() - began
    for handle in handles:
        assert handle is not None
        await handle.result(timeout=RESULT_TIMEOUT)
    return started, time.perf_counter() - began


# -- PostgreSQL --------------------------------------------------------------------------


async def pg_unreachable(url: str) -> str | None:
    """Why PostgreSQL at `url` cannot be reached, or `None` if it can."""
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        return str(exc) or type(exc).__name__
    await conn.close()
    return None


@asynccontextmanager
async def fresh_schema(pg_url: str, prefix: str = "bench") -> AsyncIterator[str]:
    """`pg_url` with `search_path` set to a new schema, dropped (with its tables) on exit."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in pg_url else "?"
        yield f"{pg_url}{separator}search_path={schema}"
    finally:
        with anyio.CancelScope(shield=True):
            await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await admin.close()


# -- counting what the server wrote ------------------------------------------------------

_COUNTS = {
    "runs": "SELECT count(*) FROM runs WHERE workflow = $1",
    "completed runs": "SELECT count(*) FROM runs WHERE workflow = $1 AND status = 'completed'",
    "completed tasks": (
        "SELECT count(*) FROM tasks t JOIN runs r ON r.id = t.run_id"
        " WHERE r.workflow = $1 AND t.status = 'completed'"
    ),
    "run claims": (
        "SELECT count(*) FROM state_transitions s JOIN runs r ON r.id = s.run_id"
        " WHERE r.workflow = $1 AND s.entity = 'run' AND s.to_status = 'running'"
    ),
    "history rows": (
        "SELECT count(*) FROM state_transitions s JOIN runs r ON r.id = s.run_id"
        " WHERE r.workflow = $1"
    ),
}


async def aiki_counts(db_url: str, workflow: str) -> dict[str, int]:
    """Runs, completed runs, completed tasks, claims and history rows of `workflow`.

    A run's claims are its moves to `running`: one per delivery to a worker or endpoint.
    """
    if db_url.startswith("sqlite:///"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            return {
                name: conn.execute(re.sub(r"\$\d+", "?", sql), (workflow,)).fetchone()[0]
                for name, sql in _COUNTS.items()
            }
        finally:
            conn.close()
    pg = await asyncpg.connect(db_url)
    try:
        return {name: int(await pg.fetchval(sql, workflow)) for name, sql in _COUNTS.items()}
    finally:
        await pg.close()


def check_counts(what: str, counts: dict[str, int], expected: dict[str, int]) -> str | None:
    """`None` if every expected count is there, else what differs."""
    wrong = {k: (counts[k], v) for k, v in expected.items() if counts[k] != v}
    if not wrong:
        return None
    differences = (f"{k} = {got}, expected {want}" for k, (got, want) in wrong.items())
    return f"{what}: " + ", ".join(differences)


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def exit_with_status(run: Callable[[], int]) -> NoReturn:
    """Run a benchmark and exit with its status; each `BenchError` it raised is printed, exit 1."""
    try:
        status = run()
    except* BenchError as group:
        for error in leaves(group):
            print(f"\nBENCHMARK FAILED: {error}")
        status = 1
    sys.exit(status)
