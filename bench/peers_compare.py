"""Aiki against its peers, DBOS 3.4 and Restate 1.7, on one machine, in one run.

For each database (SQLite, PostgreSQL) this script runs the same workloads on every
system, one after the other, and prints one table with their figures and the ratios
Aiki ÷ best peer (per figure, the better of DBOS and Restate):

1. sequential start → result latency, 200 times, of a 1-task and of a 10-task
   workflow (every task returns a small dict): p50 and p99;
2. throughput: 1,000 runs of a 3-task workflow, as fast as each system goes at its
   concurrency (DBOS and Aiki: the same runs executed at once; Restate: the
   invocations it is sent at once, its best count): runs/s until all completed.

DBOS (`dbos==3.4.*`) is installed into its own venv under a cache folder and runs
`bench/_dbos_workload.py` as a subprocess there, once per mode (sync and async), each
on a fresh system database; its better mode is reported, per figure. Restate
(`@restatedev/restate-server` 1.7 from npm, installed into a cache folder, see
`_restate.py`) runs as a server subprocess with the service `bench/_restate_workload.py`
(`restate-sdk` under hypercorn) in another, invoked through its ingress from this
process; it keeps its own storage, so it runs in each database's section, beside that
section's Aiki. Aiki runs as a real server process (`python -m aiki_server`), one
worker process (`bench/_aiki_workload.py`) and the `Client` in this process. Every
system's counts are checked afterwards (Aiki's and DBOS's in their databases,
Restate's through its admin query API): a figure whose check fails is withheld.

Run it with `hatch run bench:peers` (`--quick` for a smaller run, `--help` for more).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
from _aiki_workload import latency_1, latency_10, throughput, warmup
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
    leaves,
    logged_process,
    pg_unreachable,
    read_log,
    sequential,
    server_process,
)
from _restate import RestateRun, Workload, ensure_server, run_restate

from aiki_client import Client
from aiki_core import AikiError, ConsoleLogger, LogLevel

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine


HERE = Path(__file__).resolve().parent
DBOS_WORKLOAD = HERE / "_dbos_workload.py"
AIKI_WORKLOAD = HERE / "_aiki_workload.py"
DBOS_REQUIREMENT = "dbos==3.4.*"
DBOS_SERIES = "3.4."
PHASE_TIMEOUT = 300.0
LATENCY_STEPS = (1, 10)
TARGETS = {
    "sqlite": {"1-task p50": 0.8, "10-task p50": 0.6, "throughput": 3.0},
    "postgresql": {"1-task p50": 0.8, "10-task p50": 0.8, "throughput": 2.0},
}
"""Aiki's goals per database: a ratio to the best peer, the 1-task one to DBOS."""
AGAINST_DBOS = {"1-task p50"}
PEERS = ("dbos", "restate")
PEER_NAMES = {"dbos": "DBOS 3.4", "restate": "Restate 1.7"}


# -- options -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What to measure and how much."""

    databases: list[str]
    pg_url: str
    latency_runs: int
    throughput_runs: int
    throughput_steps: int
    concurrency: int
    starters: int
    warmup: int
    dbos_modes: list[str]
    dbos_venv: Path
    peers: list[str]
    restate_clients: list[int]
    restate_cache: Path


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "aiki-bench"


def _int_list(parser: argparse.ArgumentParser, option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"{option} takes comma-separated whole numbers")
    if not values or min(values) < 1:
        parser.error(f"{option} takes comma-separated numbers of at least 1")
    return values


def _options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Aiki against DBOS 3.4 and Restate 1.7: start→result latency and"
        " throughput, same machine."
    )
    add_database_options(parser)
    parser.add_argument("--quick", action="store_true", help="a smaller run (about two minutes)")
    parser.add_argument("--latency-runs", type=int, help="sequential runs per latency figure")
    parser.add_argument("--throughput-runs", type=int, help="runs in the throughput figure")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="runs executed at once by DBOS and Aiki (DBOS worker_concurrency, Aiki"
        " max_concurrent_runs; default 32)",
    )
    parser.add_argument(
        "--starters",
        type=int,
        default=8,
        help="start requests Aiki's client keeps in flight in the throughput figure (default 8)",
    )
    parser.add_argument(
        "--dbos-modes",
        default="sync,async",
        help="DBOS modes to run; the better is reported per figure (default sync,async)",
    )
    parser.add_argument(
        "--dbos-venv",
        type=Path,
        default=_cache() / "dbos-venv",
        help="where DBOS's venv lives (made if missing; default ~/.cache/aiki-bench/dbos-venv)",
    )
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help="peers to measure beside Aiki: dbos, restate, both, or none for Aiki alone"
        " (a before/after comparison of two checkouts; default dbos,restate)",
    )
    parser.add_argument(
        "--restate-clients",
        default="10",
        help="concurrent request-response invocations in Restate's throughput figure;"
        " a comma-separated list measures each and reports the best (default 10, its best"
        " in a sweep of 1-100 on 2 cores)",
    )
    parser.add_argument(
        "--restate-cache",
        type=Path,
        default=_cache() / "restate",
        help="where npm installs Restate's server (default ~/.cache/aiki-bench/restate)",
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    modes = [m.strip() for m in args.dbos_modes.split(",") if m.strip()]
    if not modes or any(m not in ("sync", "async") for m in modes):
        parser.error("--dbos-modes takes sync, async or both")
    peers = [p.strip() for p in args.peers.split(",") if p.strip() and args.peers != "none"]
    if (not peers and args.peers != "none") or any(p not in PEERS for p in peers):
        parser.error("--peers takes dbos, restate, both or none")
    return Options(
        databases=["sqlite", "postgresql"] if args.db == "both" else [args.db],
        pg_url=args.pg_url,
        latency_runs=args.latency_runs or (30 if quick else 200),
        throughput_runs=args.throughput_runs or (200 if quick else 1000),
        throughput_steps=3,
        concurrency=args.concurrency,
        starters=args.starters,
        warmup=5 if quick else 20,
        dbos_modes=modes,
        dbos_venv=args.dbos_venv,
        peers=peers,
        restate_clients=_int_list(parser, "--restate-clients", args.restate_clients),
        restate_cache=args.restate_cache,
    )


# -- DBOS's own venv ---------------------------------------------------------------------


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _dbos_version(python: Path) -> str | None:
    """The version of DBOS that `python` imports, or `None`."""
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import dbos, importlib.metadata as m; print(m.version('dbos'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def _uv() -> list[str] | None:
    """How to call uv: the PyPI package in this interpreter, else one on the PATH."""
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    found = shutil.which("uv")
    return [found] if found else None


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")


def ensure_dbos_venv(venv: Path) -> tuple[Path, str]:
    """DBOS's interpreter, made (with uv, else venv + pip) unless there already; and how."""
    python = _venv_python(venv)
    version = _dbos_version(python)
    if version is not None and version.startswith(DBOS_SERIES):
        return python, f"dbos {version}, reused {venv}"
    began = time.perf_counter()
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    uv = _uv()
    try:
        if uv is not None:
            _run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)])
            _run([*uv, "pip", "install", "--quiet", "--python", str(python), DBOS_REQUIREMENT])
        else:
            _run([sys.executable, "-m", "venv", str(venv)])
            _run([str(python), "-m", "pip", "install", "--quiet", DBOS_REQUIREMENT])
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    version = _dbos_version(python)
    if version is None or not version.startswith(DBOS_SERIES):
        raise BenchError(f"{DBOS_REQUIREMENT} did not install into {venv} (found {version})")
    tool = "uv" if uv is not None else "venv + pip"
    took = time.perf_counter() - began
    return python, f"dbos {version}, installed into {venv} by {tool} in {took:.0f} s"


# -- figures -----------------------------------------------------------------------------


@dataclass
class Figures:
    """One system (or one DBOS mode) on one database."""

    latency: dict[int, Latencies] = field(default_factory=dict)
    throughput: float = 0.0
    start_seconds: float | None = None
    """Seconds to start every throughput run; `None` where starting is not apart from running."""
    cpu_ms_per_run: float = 0.0
    cpu_note: str = ""
    checks: str = ""


@dataclass
class Report:
    """Everything measured on one database."""

    title: str
    targets: dict[str, float]
    dbos: dict[str, Figures] = field(default_factory=dict)
    restate: Figures | None = None
    aiki: Figures | None = None
    failures: list[str] = field(default_factory=list)


def _steps_of(opts: Options) -> dict[str, int]:
    return {"1": 1, "10": 10, "throughput": opts.throughput_steps}


# -- DBOS --------------------------------------------------------------------------------


def _dbos_env() -> dict[str, str]:
    """This environment without what would point DBOS's interpreter at ours."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop}


async def _dbos_counts(db_url: str) -> dict[str, tuple[int, int]]:
    """Per workflow name: workflows in `SUCCESS`, and the step outputs they recorded."""
    runs = "SELECT name, count(*) FROM {s}workflow_status WHERE status = 'SUCCESS' GROUP BY name"
    steps = (
        "SELECT w.name, count(*) FROM {s}operation_outputs o"
        " JOIN {s}workflow_status w ON w.workflow_uuid = o.workflow_uuid"
        " WHERE w.status = 'SUCCESS' AND o.error IS NULL GROUP BY w.name"
    )
    if db_url.startswith("sqlite:///"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            run_rows = conn.execute(runs.format(s="")).fetchall()
            step_rows = conn.execute(steps.format(s="")).fetchall()
        finally:
            conn.close()
    else:
        pg = await asyncpg.connect(db_url)
        try:
            run_rows = [tuple(r) for r in await pg.fetch(runs.format(s="dbos."))]
            step_rows = [tuple(r) for r in await pg.fetch(steps.format(s="dbos."))]
        finally:
            await pg.close()
    step_counts = {str(name): int(n) for name, n in step_rows}
    return {str(name): (int(n), step_counts.get(str(name), 0)) for name, n in run_rows}


async def run_dbos(python: Path, mode: str, db_url: str, opts: Options, log: Path) -> Figures:
    """One DBOS mode on a fresh system database: run the workload, then count its rows."""
    command = [
        str(python),
        str(DBOS_WORKLOAD),
        f"--db-url={db_url}",
        f"--mode={mode}",
        f"--latency-runs={opts.latency_runs}",
        f"--throughput-runs={opts.throughput_runs}",
        f"--throughput-steps={opts.throughput_steps}",
        f"--concurrency={opts.concurrency}",
        f"--warmup={opts.warmup}",
    ]
    try:
        with anyio.fail_after(PHASE_TIMEOUT):
            done = await anyio.run_process(command, check=False, env=_dbos_env())
    except TimeoutError:
        raise BenchError(f"DBOS {mode} did not finish in {PHASE_TIMEOUT:.0f} s") from None
    await anyio.Path(log).write_bytes(done.stdout + b"\n--- stderr ---\n" + done.stderr)
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.decode(errors="replace")[-3000:]
        raise BenchError(f"DBOS {mode} exited with {done.returncode}:\n{tail}")
    data: dict[str, Any] = json.loads(lines[-1])
    figures = Figures()
    for steps, samples in data["latency"].items():
        figures.latency[int(steps)] = Latencies(list(samples))
    runs = data["throughput"]["runs"]
    figures.throughput = runs / data["throughput"]["seconds"]
    figures.start_seconds = data["throughput"]["enqueue_seconds"]
    figures.cpu_ms_per_run = data["throughput"]["cpu_seconds"] / runs * 1e3
    counts = await _dbos_counts(db_url)
    wrong = []
    for name, (want_runs, want_steps) in data["expected"].items():
        got_runs, got_steps = counts.get(name, (0, 0))
        if (got_runs, got_steps) != (want_runs, want_steps):
            wrong.append(
                f"{name}: {got_runs} SUCCESS / {got_steps} steps,"
                f" expected {want_runs} / {want_steps}"
            )
    if wrong:
        raise BenchError(f"DBOS {mode} check failed: " + "; ".join(wrong))
    total_runs = sum(r for r, _ in data["expected"].values())
    total_steps = sum(s for _, s in data["expected"].values())
    figures.checks = (
        f"DBOS {data['dbos_version']} {mode}: {total_runs} workflows SUCCESS,"
        f" {total_steps} step outputs in its database"
    )
    return figures


def _database_url(pg_url: str, database: str) -> str:
    """`pg_url` pointing at another database of the same server."""
    parts = urlsplit(pg_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def _drop_database(pg_url: str, database: str) -> None:
    with anyio.CancelScope(shield=True):
        admin = await asyncpg.connect(pg_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()


# -- Restate -----------------------------------------------------------------------------


async def run_restate_figures(
    server: tuple[Path, str], opts: Options, folder: Path, label: str
) -> Figures:
    """A fresh Restate server and service; every workload through its ingress; counts."""
    binary, version = server
    work = Workload(
        warmup=opts.warmup,
        latency_runs=opts.latency_runs,
        latency_steps=LATENCY_STEPS,
        throughput_runs=opts.throughput_runs,
        throughput_steps=opts.throughput_steps,
        clients=tuple(opts.restate_clients),
    )
    timeout = PHASE_TIMEOUT * len(work.clients)
    return _restate_figures(await run_restate(binary, version, work, folder, label, timeout))


def _restate_figures(run: RestateRun) -> Figures:
    """Restate's figures: its best throughput over the client counts measured."""
    best = max(run.throughput, key=lambda t: t.runs / t.seconds)
    server, service, bench = best.cpu_ms
    figures = Figures(latency=run.latency, throughput=best.runs / best.seconds)
    figures.cpu_ms_per_run = server + service + bench
    figures.cpu_note = (
        f"Restate CPU per throughput run ({best.clients} clients): server {server:.1f},"
        f" service {service:.1f}, bench client {bench:.1f} ms"
    )
    if len(run.throughput) > 1:
        tried = ", ".join(f"{t.clients}: {t.runs / t.seconds:,.1f}" for t in run.throughput)
        figures.cpu_note += f"\n  Restate throughput by concurrent clients, runs/s: {tried}"
    figures.checks = f"Restate {run.version} (restate-sdk {run.sdk_version}): {run.checks}"
    return figures


# -- Aiki --------------------------------------------------------------------------------


class _AikiRun:
    """Where an Aiki measurement is, and its processes' logs, to show when it fails."""

    def __init__(self, folder: Path, label: str) -> None:
        self.server_log = folder / f"aiki-server-{label}.log"
        self.worker_log = folder / f"aiki-worker-{label}.log"
        self.phase = "start-up"

    def failure(self, error: BaseException) -> BenchError:
        errors = "; ".join(f"{type(e).__name__}: {e}" for e in leaves(error))
        return BenchError(
            f"failed in {self.phase}: {errors}\n"
            f"--- server log (tail) ---\n{read_log(self.server_log, 3000)}\n"
            f"--- worker log (tail) ---\n{read_log(self.worker_log, 3000)}"
        )


async def _aiki_workloads(
    client: Client, opts: Options, pids: tuple[int, int], state: _AikiRun
) -> Figures:
    figures = Figures()
    state.phase = "warm-up"
    await sequential(client, warmup, 1, opts.warmup)
    for steps, version in zip(LATENCY_STEPS, (latency_1, latency_10), strict=True):
        state.phase = f"{steps}-task latency"
        figures.latency[steps] = await sequential(client, version, steps, opts.latency_runs)
    state.phase = "throughput"
    runs = opts.throughput_runs
    before = cpu_snapshot(pids)
    figures.start_seconds, seconds = await all_at_once(
        client, throughput, opts.throughput_steps, runs, opts.starters
    )
    after = cpu_snapshot(pids)
    server, worker, bench = ((b - a) / runs * 1e3 for a, b in zip(before, after, strict=True))
    figures.throughput = runs / seconds
    figures.cpu_ms_per_run = server + worker + bench
    figures.cpu_note = (
        f"Aiki CPU per throughput run: server {server:.1f}, worker {worker:.1f},"
        f" bench client {bench:.1f} ms"
    )
    return figures


async def _aiki_checks(db_url: str, opts: Options) -> str:
    """Count each workload's runs and tasks in Aiki's database; what was found."""
    expected = {
        warmup.workflow: (opts.warmup, 1),
        latency_1.workflow: (opts.latency_runs, 1),
        latency_10.workflow: (opts.latency_runs, 10),
        throughput.workflow: (opts.throughput_runs, opts.throughput_steps),
    }
    wrong = []
    for workflow, (runs, steps) in expected.items():
        counts = await aiki_counts(db_url, workflow)
        want = {"runs": runs, "completed runs": runs, "completed tasks": runs * steps}
        failure = check_counts(workflow, counts, want)
        if failure:
            wrong.append(failure)
    if wrong:
        raise BenchError("Aiki check failed: " + "; ".join(wrong))
    total_runs = sum(r for r, _ in expected.values())
    total_tasks = sum(r * s for r, s in expected.values())
    return f"Aiki: {total_runs} runs completed, {total_tasks} tasks completed in its database"


async def run_aiki(db_url: str, opts: Options, folder: Path, label: str) -> Figures:
    """A server and one worker on `db_url`; every workload through the client; counts."""
    state = _AikiRun(folder, label)
    try:
        async with server_process(db_url, state.server_log) as server:
            worker_command = [
                sys.executable,
                str(AIKI_WORKLOAD),
                f"--url={server.base_url}",
                f"--concurrency={opts.concurrency}",
            ]
            async with (
                logged_process(worker_command, state.worker_log) as worker,
                Client(server.base_url, logger=ConsoleLogger(LogLevel.WARN)) as client,
            ):
                with anyio.fail_after(PHASE_TIMEOUT):
                    pids = (server.pid, worker.pid)
                    figures = await _aiki_workloads(client, opts, pids, state)
                if worker.returncode is not None:
                    raise BenchError(f"the worker exited with {worker.returncode}")
    except* (AikiError, OSError, TimeoutError, BenchError) as group:
        raise state.failure(group) from group
    figures.checks = await _aiki_checks(db_url, opts)
    return figures


# -- one database ------------------------------------------------------------------------


async def _attempt(report: Report, what: str, work: Coroutine[Any, Any, Figures]) -> Figures | None:
    """Await `work`; on a `BenchError` note the failure and return `None`."""
    try:
        return await work
    except* BenchError as group:
        for error in leaves(group):
            report.failures.append(f"{what}: {error}")
    return None


@dataclass(frozen=True)
class Setup:
    """The peers as installed: DBOS's interpreter, Restate's server and version; or `None`."""

    dbos_python: Path | None
    restate_server: tuple[Path, str] | None


async def _restate(report: Report, setup: Setup, opts: Options, folder: Path, label: str) -> None:
    if setup.restate_server is not None:
        work = run_restate_figures(setup.restate_server, opts, folder, label)
        report.restate = await _attempt(report, "Restate", work)


def _dbos_runs(setup: Setup, opts: Options) -> list[tuple[Path, str]]:
    """DBOS's interpreter and each mode to run; none if DBOS is not measured."""
    python = setup.dbos_python
    return [] if python is None else [(python, mode) for mode in opts.dbos_modes]


async def bench_sqlite(setup: Setup, opts: Options, folder: Path) -> Report:
    """DBOS and Aiki on scratch SQLite files in WAL mode; Restate on its own storage."""
    report = Report("SQLite (WAL, synchronous=FULL)", TARGETS["sqlite"])
    for python, mode in _dbos_runs(setup, opts):
        url = f"sqlite:///{folder / f'dbos-{mode}.sqlite'}"
        log = folder / f"dbos-{mode}-sqlite.log"
        figures = await _attempt(report, f"DBOS {mode}", run_dbos(python, mode, url, opts, log))
        if figures is not None:
            report.dbos[mode] = figures
    await _restate(report, setup, opts, folder, "sqlite")
    aiki_url = f"sqlite:///{folder / 'aiki.db'}"
    report.aiki = await _attempt(report, "Aiki", run_aiki(aiki_url, opts, folder, "sqlite"))
    return report


async def bench_postgres(setup: Setup, opts: Options, folder: Path) -> Report:
    """DBOS on system databases of its own (dropped after), Aiki on a fresh schema.

    Restate runs on its own storage, as in the SQLite section: a peer of both tables.
    """
    report = Report("PostgreSQL", TARGETS["postgresql"])
    for python, mode in _dbos_runs(setup, opts):
        database = f"aiki_bench_dbos_{mode}_{uuid.uuid4().hex[:8]}"
        url = _database_url(opts.pg_url, database)
        log = folder / f"dbos-{mode}-postgresql.log"
        try:
            figures = await _attempt(report, f"DBOS {mode}", run_dbos(python, mode, url, opts, log))
        finally:
            await _drop_database(opts.pg_url, database)
        if figures is not None:
            report.dbos[mode] = figures
    await _restate(report, setup, opts, folder, "postgresql")
    async with fresh_schema(opts.pg_url, "bench_peers_compare") as aiki_url:
        report.aiki = await _attempt(report, "Aiki", run_aiki(aiki_url, opts, folder, "postgresql"))
    return report


# -- output ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    label: str
    unit: str
    value: Callable[[Figures], float]
    lower_is_better: bool
    target: float | None = None


def _latency_ms(steps: int, p: float, figures: Figures) -> float:
    return figures.latency[steps].percentile(p) * 1e3


def _throughput(figures: Figures) -> float:
    return figures.throughput


def _rows(targets: dict[str, float]) -> list[_Row]:
    rows = [
        _Row(
            f"{steps}-task p{round(p * 100)} latency",
            "ms",
            partial(_latency_ms, steps, p),
            True,
            targets.get(f"{steps}-task p{round(p * 100)}"),
        )
        for steps in LATENCY_STEPS
        for p in (0.5, 0.99)
    ]
    rows.append(_Row("throughput", "runs/s", _throughput, False, targets.get("throughput")))
    return rows


def _best(values: list[float], lower_is_better: bool) -> float | None:
    if not values:
        return None
    return min(values) if lower_is_better else max(values)


def _cell(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _peer_row(report: Report, row: _Row) -> tuple[list[float], float | None, float | None]:
    """Each DBOS mode's value, the best of them, and Restate's value."""
    dbos = [float(row.value(figures)) for figures in report.dbos.values()]
    restate = None if report.restate is None else float(row.value(report.restate))
    return dbos, _best(dbos, row.lower_is_better), restate


def _print_report(report: Report, opts: Options) -> list[str]:
    """Print the table of one database; return the lines of its target summary."""
    modes = list(report.dbos)
    headers = [
        "figure",
        *(f"DBOS {m}" for m in modes),
        "DBOS best",
        "Restate",
        "best peer",
        "Aiki",
        "Aiki ÷ best peer",
        "target",
    ]
    table: list[list[str]] = []
    summary: list[str] = []
    for row in _rows(report.targets):
        dbos, dbos_best, restate = _peer_row(report, row)
        peers = {
            name: value
            for name, value in (("DBOS", dbos_best), ("Restate", restate))
            if value is not None
        }
        best = _best(list(peers.values()), row.lower_is_better)
        best_name = next((name for name, value in peers.items() if value == best), "")
        aiki = None if report.aiki is None else float(row.value(report.aiki))
        ratio = None if best is None or aiki is None else aiki / best
        target = "-"
        if row.target is not None:
            sign = "<=" if row.lower_is_better else ">="
            against, base = (
                ("DBOS", dbos_best)
                if row.label.removesuffix(" latency") in AGAINST_DBOS
                else (f"best peer ({best_name})", best)
            )
            target = f"{sign} {row.target:.1f}×" + (" DBOS" if against == "DBOS" else "")
            if base is not None and aiki is not None:
                goal = aiki / base
                met = goal <= row.target if row.lower_is_better else goal >= row.target
                target += " met" if met else " MISSED"
                summary.append(
                    f"{report.title}, {row.label}: Aiki ÷ {against} = {goal:.2f}"
                    f" (target {sign} {row.target:.1f}: {'met' if met else 'MISSED'})"
                )
        table.append(
            [
                f"{row.label}, {row.unit}",
                *(_cell(v) for v in dbos),
                _cell(dbos_best),
                _cell(restate),
                "-" if best is None else f"{best:,.1f} {best_name}",
                _cell(aiki),
                _cell(ratio, 2),
                target,
            ]
        )
    columns = [*(report.dbos[m] for m in modes), None, report.restate, None, report.aiki]
    for name, attribute in (
        (f"throughput: time to start all {opts.throughput_runs}, s", "start_seconds"),
        ("throughput: CPU per run (not the database's), ms", "cpu_ms_per_run"),
    ):
        cells = ["" if f is None else _cell(getattr(f, attribute), 2) for f in columns]
        if report.restate is None:
            cells[len(modes) + 1] = "-"
        if report.aiki is None:
            cells[-1] = "-"
        table.append([name, *cells, "", ""])
    widths = [max(len(r[i]) for r in [headers, *table]) for i in range(len(headers))]
    print(f"\n== {report.title}")
    for line in [headers, *table]:
        cells = [line[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
        print("  " + "  ".join(cells).rstrip())
    for figures in (report.restate, report.aiki):
        if figures is not None:
            print(f"  {figures.cpu_note}")
    print("  checks:")
    for figures in [*report.dbos.values(), report.restate, report.aiki]:
        if figures is not None:
            print(f"    {figures.checks}")
    for failure in report.failures:
        print(f"  FAILED, figure withheld: {failure}")
    return summary


async def _main(opts: Options, setup: Setup, notes: list[str]) -> int:
    print(
        f"Aiki vs {' and '.join(PEER_NAMES[p] for p in opts.peers) or 'no peer'}:"
        f" {opts.latency_runs}"
        f" sequential runs per latency figure (after {opts.warmup} warm-up runs),"
        f" {opts.throughput_runs} runs × {opts.throughput_steps} tasks for throughput;"
        f" python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version},"
        f" {os.cpu_count()} cores"
    )
    print(
        f"Throughput concurrency: Aiki max_concurrent_runs {opts.concurrency} (one worker"
        f" process), its client keeping {opts.starters} starts in flight"
    )
    if setup.dbos_python is not None:
        print(
            f"  DBOS queue worker_concurrency {opts.concurrency}, modes"
            f" {', '.join(opts.dbos_modes)} (better per figure)"
        )
    if setup.restate_server is not None:
        clients = ", ".join(str(c) for c in opts.restate_clients)
        print(f"  Restate: {clients} concurrent request-response invocations (best reported)")
    for note in notes:
        print(note)
    failed = False
    summary: list[str] = []
    with tempfile.TemporaryDirectory(prefix="aiki-bench-peers-") as tmp:
        folder = Path(tmp)
        for database in opts.databases:
            began = time.perf_counter()
            if database == "sqlite":
                report = await bench_sqlite(setup, opts, folder)
            else:
                problem = await pg_unreachable(opts.pg_url)
                if problem is not None:
                    print(f"\n== PostgreSQL at {opts.pg_url}: unreachable ({problem})")
                    failed = True
                    continue
                report = await bench_postgres(setup, opts, folder)
            summary += _print_report(report, opts)
            print(f"  ({time.perf_counter() - began:.0f} s)")
            failed = failed or bool(report.failures)
    if summary:
        print("\nTargets (latency ratio < 1 and throughput ratio > 1 are better for Aiki):")
        for line in summary:
            print(f"  {line}")
    return 1 if failed else 0


def _setup(opts: Options) -> tuple[Setup, list[str]]:
    """Install (or find) each peer asked for; what was done, to print."""
    python = server = None
    notes = []
    if "dbos" in opts.peers:
        python, venv_note = ensure_dbos_venv(opts.dbos_venv)
        notes.append(f"DBOS venv: {venv_note}")
    if "restate" in opts.peers:
        binary, version, how = ensure_server(opts.restate_cache)
        server = (binary, version)
        notes.append(f"Restate server: restate-server {version}, {how}")
    return Setup(python, server), notes


def main(argv: list[str] | None = None) -> None:
    """Run the comparison; exit 1 if a system failed, a check failed, or PostgreSQL is down."""
    opts = _options(argv)
    try:
        setup, notes = _setup(opts)
    except BenchError as setup_error:
        print(f"BENCHMARK FAILED: cannot set up a peer: {setup_error}")
        sys.exit(1)
    exit_with_status(lambda: anyio.run(_main, opts, setup, notes))


if __name__ == "__main__":
    main()
