"""The DBOS side of `peers_compare.py`: run the workloads on DBOS, print JSON results.

This file runs under the interpreter of the DBOS venv that `peers_compare.py` builds
(`dbos==3.4.*`), never in the monorepo's environments: DBOS and Aiki never share an
interpreter. It is excluded from mypy (its `dbos` import is not installed there).

One process, one mode (`--mode sync` or `--mode async`), one fresh system database:

1. warm-up: a few sequential runs of a 1-step workflow;
2. latency: 200 times, start a workflow (`DBOS.start_workflow`, no queue: DBOS's
   fastest way to run one) and wait for its result; a 1-step and a 10-step workflow;
3. throughput: enqueue 1,000 runs of a 3-step workflow on a queue with
   `worker_concurrency=--concurrency` and `polling_interval_sec=0.01`, registered after
   `DBOS.launch()` as 3.4 requires, then wait for every result.

Every step returns a small dict. The last line of stdout is one JSON object: the
samples, the throughput's run count and seconds, and the runs per workflow name that
the caller should find completed (`SUCCESS`) in the system database.

For SQLite the caller names a file that does not exist yet; it is created here in WAL
mode before DBOS opens it (DBOS 3.4 does not turn WAL on by itself).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import sqlite3
import sys
import time
from typing import Any

from dbos import DBOS, DBOSConfig

QUEUE = "bench-throughput"


# -- the workflows: one name per workload, so each count in the database is its own check


@DBOS.step()
def step(i: int) -> dict[str, Any]:
    """A step that returns a small dict."""
    return {"step": i, "ok": True, "label": f"step-{i}"}


def _steps(count: int) -> int:
    total = 0
    for i in range(count):
        total += step(i)["step"]
    return total


@DBOS.workflow(name="sync_warmup")
def sync_warmup(count: int) -> int:
    """Warm-up runs."""
    return _steps(count)


@DBOS.workflow(name="sync_latency_1")
def sync_latency_1(count: int) -> int:
    """The 1-step latency workload."""
    return _steps(count)


@DBOS.workflow(name="sync_latency_10")
def sync_latency_10(count: int) -> int:
    """The 10-step latency workload."""
    return _steps(count)


@DBOS.workflow(name="sync_throughput")
def sync_throughput(count: int) -> int:
    """The throughput workload."""
    return _steps(count)


@DBOS.step()
async def astep(i: int) -> dict[str, Any]:
    """The async twin of `step`."""
    return {"step": i, "ok": True, "label": f"step-{i}"}


async def _asteps(count: int) -> int:
    total = 0
    for i in range(count):
        total += (await astep(i))["step"]
    return total


@DBOS.workflow(name="async_warmup")
async def async_warmup(count: int) -> int:
    """Warm-up runs."""
    return await _asteps(count)


@DBOS.workflow(name="async_latency_1")
async def async_latency_1(count: int) -> int:
    """The 1-step latency workload."""
    return await _asteps(count)


@DBOS.workflow(name="async_latency_10")
async def async_latency_10(count: int) -> int:
    """The 10-step latency workload."""
    return await _asteps(count)


@DBOS.workflow(name="async_throughput")
async def async_throughput(count: int) -> int:
    """The throughput workload."""
    return await _asteps(count)


# -- the two modes ---------------------------------------------------------------------


def run_sync(args: argparse.Namespace) -> dict[str, Any]:
    """Every workload with sync workflows: `start_workflow`, `handle.get_result()`."""
    for _ in range(args.warmup):
        DBOS.start_workflow(sync_warmup, 1).get_result()
    latency: dict[str, list[float]] = {}
    for steps, fn in ((1, sync_latency_1), (10, sync_latency_10)):
        samples: list[float] = []
        for _ in range(args.latency_runs):
            began = time.perf_counter()
            result = DBOS.start_workflow(fn, steps).get_result()
            samples.append(time.perf_counter() - began)
            assert result == steps * (steps - 1) // 2, result
        latency[str(steps)] = samples
    DBOS.register_queue(QUEUE, worker_concurrency=args.concurrency, polling_interval_sec=0.01)
    cpu = time.process_time()
    began = time.perf_counter()
    handles = [
        DBOS.enqueue_workflow(QUEUE, sync_throughput, args.throughput_steps)
        for _ in range(args.throughput_runs)
    ]
    enqueued = time.perf_counter() - began
    for handle in handles:
        handle.get_result()
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu
    return _results(args, "sync", latency, enqueued, elapsed, cpu)


async def run_async(args: argparse.Namespace) -> dict[str, Any]:
    """Every workload with async workflows: `start_workflow_async`, `await get_result()`."""
    for _ in range(args.warmup):
        await (await DBOS.start_workflow_async(async_warmup, 1)).get_result()
    latency: dict[str, list[float]] = {}
    for steps, fn in ((1, async_latency_1), (10, async_latency_10)):
        samples: list[float] = []
        for _ in range(args.latency_runs):
            began = time.perf_counter()
            handle = await DBOS.start_workflow_async(fn, steps)
            result = await handle.get_result()
            samples.append(time.perf_counter() - began)
            assert result == steps * (steps - 1) // 2, result
        latency[str(steps)] = samples
    await DBOS.register_queue_async(
        QUEUE, worker_concurrency=args.concurrency, polling_interval_sec=0.01
    )
    cpu = time.process_time()
    began = time.perf_counter()
    # DBOS's async API is asyncio's (and this venv has no anyio): gather is its idiom
    handles = await asyncio.gather(  # noqa: TID251
        *(
            DBOS.enqueue_workflow_async(QUEUE, async_throughput, args.throughput_steps)
            for _ in range(args.throughput_runs)
        )
    )
    enqueued = time.perf_counter() - began
    for handle in handles:
        await handle.get_result()
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu
    return _results(args, "async", latency, enqueued, elapsed, cpu)


def _results(
    args: argparse.Namespace,
    mode: str,
    latency: dict[str, list[float]],
    enqueued: float,
    elapsed: float,
    cpu: float,
) -> dict[str, Any]:
    steps = args.throughput_steps
    return {
        "mode": mode,
        "dbos_version": importlib.metadata.version("dbos"),
        "latency": latency,
        "throughput": {
            "runs": args.throughput_runs,
            "steps": args.throughput_steps,
            "enqueue_seconds": enqueued,
            "seconds": elapsed,
            "cpu_seconds": cpu,
        },
        # runs and steps per workflow name, to find completed in the system database
        "expected": {
            f"{mode}_warmup": [args.warmup, args.warmup],
            f"{mode}_latency_1": [args.latency_runs, args.latency_runs],
            f"{mode}_latency_10": [args.latency_runs, 10 * args.latency_runs],
            f"{mode}_throughput": [args.throughput_runs, steps * args.throughput_runs],
        },
    }


def _create_wal_file(url: str) -> None:
    path = url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        conn.close()
    if mode != "wal":
        raise SystemExit(f"cannot turn WAL on for {path}: journal_mode={mode}")


def main() -> None:
    """Parse the arguments, launch DBOS, run one mode, print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db-url", required=True, help="DBOS system database URL")
    parser.add_argument("--mode", choices=["sync", "async"], required=True)
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--throughput-runs", type=int, default=1000)
    parser.add_argument("--throughput-steps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    if args.db_url.startswith("sqlite:///"):
        _create_wal_file(args.db_url)
    config: DBOSConfig = {
        "name": "aiki-bench",
        "system_database_url": args.db_url,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    try:
        if args.mode == "sync":
            results = run_sync(args)
        else:
            results = asyncio.run(run_async(args))
    finally:
        DBOS.destroy()
    logging.shutdown()
    print(json.dumps(results))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
