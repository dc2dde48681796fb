"""What flow control costs a claim: the same queue with and without concurrency limits.

For SQLite and for PostgreSQL, this script fills two fresh databases with the same
number of queued runs (100,000 by default):

- **plain**: runs without priority or concurrency key, and no limit;
- **flow**: the runs spread over 10,000 concurrency keys (`--keys`) under a limit of 2
  per key, with priorities 0 to 9, ranked as the server ranks them at start;

then, on an in-process server app (HTTP through `httpx.ASGITransport`, so only the
server's own work is measured), it times

1. **empty poll**: a claim for a version no run belongs to (what most polls are);
2. **claim**: a claim of one run (`max_runs=1`), then its completion (not timed), so
   the next claim takes the next run.

It prints the p50 and p99 of each, and the ratio flow / plain (the aim: at most 1.5).

Run it with `hatch run bench:flow` (`--runs 20000 --keys 2000` for a quicker run,
`--db sqlite` for one database).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from _common import BenchError, Latencies, add_database_options, exit_with_status, fresh_schema

from aiki_core.wire import ConcurrencySpec, StartRunRequest
from aiki_server import ServerSettings, create_app
from aiki_server._starts import start_run_in
from aiki_server.testing import serving

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi import FastAPI

    from aiki_server._storage._database import Tx

WORKFLOW = "bench-flow"
BATCH = 2000
"""Runs inserted per transaction while filling a database."""


@dataclass
class Options:
    """The command line."""

    db: str
    pg_url: str
    runs: int
    keys: int
    claims: int


def _options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_database_options(parser)
    parser.add_argument("--runs", type=int, default=100_000, help="queued runs (100,000)")
    parser.add_argument("--keys", type=int, default=10_000, help="concurrency keys (10,000)")
    parser.add_argument("--claims", type=int, default=500, help="timed claims and polls (500)")
    args = parser.parse_args(argv)
    return Options(args.db, args.pg_url, args.runs, args.keys, args.claims)


async def _fill(app: FastAPI, opts: Options, *, flow: bool) -> None:
    """Queue `opts.runs` runs as starts would (through the server's own start)."""
    rng = random.Random(7)
    db = app.state.db

    async def batch(tx: Tx, first: int) -> None:
        for n in range(first, min(first + BATCH, opts.runs)):
            fields: dict[str, Any] = {"workflow": WORKFLOW, "version": "1", "input": n}
            if flow:
                key = f"customer-{rng.randrange(opts.keys)}"
                fields["priority"] = rng.randrange(10)
                fields["concurrency"] = ConcurrencySpec(key=key, limit=2)
            await start_run_in(tx, "default", StartRunRequest(**fields), int(time.time() * 1000))

    for first in range(0, opts.runs, BATCH):
        await db.write(lambda tx, first=first: batch(tx, first))


async def _claim(client: httpx.AsyncClient, version: str) -> list[dict[str, Any]]:
    r = await client.post(
        "/claims",
        json={
            "worker_id": "bench",
            "capabilities": [{"workflow": WORKFLOW, "version": version, "pool": "default"}],
            "max_runs": 1,
            "wait": 0,
        },
    )
    if r.status_code != 200:
        raise BenchError(f"claim answered {r.status_code}: {r.text[:300]}")
    runs: list[dict[str, Any]] = r.json()["runs"]
    return runs


async def _measure(client: httpx.AsyncClient, claims: int) -> tuple[Latencies, Latencies]:
    empty, taken = Latencies(), Latencies()
    for _ in range(claims):
        began = time.perf_counter()
        if await _claim(client, "no-such-version"):
            raise BenchError("an empty poll claimed a run")
        empty.samples.append(time.perf_counter() - began)
        began = time.perf_counter()
        runs = await _claim(client, "1")
        taken.samples.append(time.perf_counter() - began)
        if not runs:
            raise BenchError("a claim found no run")
        run = runs[0]["run"]
        done = await client.post(
            f"/runs/{run['id']}/transition",
            json={"revision": run["revision"], "action": {"kind": "complete"}},
        )
        if done.status_code != 200:
            raise BenchError(f"completion answered {done.status_code}: {done.text[:300]}")
    return empty, taken


@asynccontextmanager
async def _database(kind: str, opts: Options, folder: Path, name: str) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / name}.db"
        return
    async with fresh_schema(opts.pg_url, prefix="bench_flow") as url:
        yield url


async def _one(kind: str, opts: Options, folder: Path, *, flow: bool) -> tuple[Latencies, ...]:
    name = "flow" if flow else "plain"
    async with _database(kind, opts, folder, name) as url:
        app = create_app(url, ServerSettings(allowed_hosts=("*",)))
        async with serving(app):
            began = time.perf_counter()
            await _fill(app, opts, flow=flow)
            took = time.perf_counter() - began
            print(f"  {kind} {name}: {opts.runs} runs queued in {took:.0f} s")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://aiki/api/v1"
            ) as client:
                await _measure(client, 20)  # warm up
                return await _measure(client, opts.claims)


def _row(what: str, plain: Latencies, flow: Latencies) -> str:
    ratio = flow.percentile(0.5) / plain.percentile(0.5)
    return (
        f"  {what:<12} plain p50 {plain.percentile(0.5) * 1000:7.2f} ms"
        f" p99 {plain.percentile(0.99) * 1000:7.2f} ms | flow p50"
        f" {flow.percentile(0.5) * 1000:7.2f} ms p99 {flow.percentile(0.99) * 1000:7.2f} ms"
        f" | flow / plain {ratio:4.2f}"
    )


async def _main(opts: Options) -> int:
    kinds = ["sqlite", "postgresql"] if opts.db == "both" else [opts.db]
    with tempfile.TemporaryDirectory(prefix="aiki-flow-bench-") as folder:
        for kind in kinds:
            plain_empty, plain_claim = await _one(kind, opts, Path(folder), flow=False)
            flow_empty, flow_claim = await _one(kind, opts, Path(folder), flow=True)
            print(f"{kind}: {opts.runs} queued runs, {opts.keys} keys, {opts.claims} claims")
            print(_row("empty poll", plain_empty, flow_empty))
            print(_row("claim", plain_claim, flow_claim))
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point: `python bench/flow_bench.py [options]`."""
    opts = _options(argv if argv is not None else sys.argv[1:])
    exit_with_status(lambda: anyio.run(_main, opts))


if __name__ == "__main__":
    main()
