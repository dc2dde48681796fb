"""What a million finished runs cost the engine: the same operations on a big and a small database.

For SQLite and for PostgreSQL, this script fills two fresh databases through the
server's own storage layer:

- **big**: `--runs` finished runs (1,000,000 by default) and a tenth as many sleeping;
- **small**: 1,000 finished runs and 100 sleeping (`--small`).

Each run is a copy of a real one: two template runs go through the server (started,
claimed, then completed or put to sleep for 30 days), and one bulk `INSERT ... SELECT`
per batch (a recursive CTE on SQLite, `generate_series` on PostgreSQL) copies each
template's row, its history and its sleep under new ids and older creation times. The
finished runs are of the very workflow, version and pool the measured claims ask for.

Then, on an in-process server app (HTTP through `httpx.ASGITransport`, so only the
server's own work is measured), it times each operation `--samples` times:

1. **empty poll ×1** / **empty poll ×5**: a claim that finds nothing, for one and for
   five (workflow, version, pool) triples;
2. **start**: a run started through `POST /runs`;
3. **claim**: a claim of one of those runs (`max_runs=1`), then its completion (untimed);
4. **timer pass**: one pass of the timer daemon with nothing due, and its look for the
   next due time;
5. **list runs**: the first page of `GET /runs`;
6. **run detail**: `GET /runs/{id}` of a finished run.

It prints the p50 of each on both databases and the ratio big / small (the aim: at
most 1.5 for every operation).

Run it with `hatch run bench:scale` (`--runs 100000` for a quicker run, `--db sqlite`
for one database).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from _common import BenchError, Latencies, add_database_options, exit_with_status, fresh_schema

from aiki_server import ServerSettings, create_app
from aiki_server.testing import serving

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from fastapi import FastAPI

    from aiki_server._storage._database import Database, Tx

WORKFLOW = "bench-scale"
BATCH = 50_000
"""Rows copied per transaction while filling a database."""
SLEEP = timedelta(days=30)

OPERATIONS = (
    "empty poll x1",
    "empty poll x5",
    "start",
    "claim",
    "timer pass",
    "list runs",
    "run detail",
)


@dataclass
class Options:
    """The command line."""

    db: str
    pg_url: str
    runs: int
    small: int
    samples: int


def _options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_database_options(parser)
    parser.add_argument(
        "--runs", type=int, default=1_000_000, help="finished runs of the big database (1,000,000)"
    )
    parser.add_argument(
        "--small", type=int, default=1000, help="finished runs of the small database (1,000)"
    )
    parser.add_argument("--samples", type=int, default=200, help="timings per operation (200)")
    args = parser.parse_args(argv)
    return Options(args.db, args.pg_url, args.runs, args.small, args.samples)


# -- filling -----------------------------------------------------------------------------


def _triple(version: str) -> dict[str, str]:
    return {"workflow": WORKFLOW, "version": version, "pool": "default"}


async def _call(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    r = await client.request(method, path, **kwargs)
    if r.status_code not in (200, 201):
        raise BenchError(f"{method} {path} answered {r.status_code}: {r.text[:300]}")
    return r.json()


async def _claim(client: httpx.AsyncClient, versions: list[str]) -> list[dict[str, Any]]:
    body = {
        "worker_id": "bench",
        "capabilities": [_triple(v) for v in versions],
        "max_runs": 1,
        "wait": 0,
    }
    runs: list[dict[str, Any]] = (await _call(client, "POST", "/claims", json=body))["runs"]
    return runs


async def _transition(client: httpx.AsyncClient, run: dict[str, Any], action: Any) -> None:
    body = {"revision": run["revision"], "action": action}
    await _call(client, "POST", f"/runs/{run['id']}/transition", json=body)


async def _templates(client: httpx.AsyncClient) -> tuple[str, str]:
    """A finished run and a sleeping one, made by the server itself: their ids."""
    templates = []
    for action in (
        {"kind": "complete", "result": 1},
        {
            "kind": "suspend",
            "waits": [
                {"kind": "sleep", "name": "nap", "occurrence": 1, "duration": SLEEP.total_seconds()}
            ],
        },
    ):
        await _call(
            client,
            "POST",
            "/runs",
            json={"workflow": WORKFLOW, "version": "1", "input": 1, "timeout": 86_400 * 60},
        )
        claimed = await _claim(client, ["1"])
        if len(claimed) != 1:
            raise BenchError("the template run was not claimed")
        await _transition(client, claimed[0]["run"], action)
        templates.append(claimed[0]["run"]["id"])
    return templates[0], templates[1]


async def _columns(tx: Tx, dialect: str, table: str) -> list[str]:
    if dialect == "sqlite":
        rows = await tx.fetch("SELECT name FROM pragma_table_info($1)", table)
        return [row["name"] for row in rows]
    rows = await tx.fetch(
        "SELECT column_name AS name FROM information_schema.columns WHERE table_name = $1"
        " AND table_schema = current_schema() ORDER BY ordinal_position",
        table,
    )
    return [row["name"] for row in rows]


async def _copy(db: Database, template: str, first: int, count: int) -> None:
    """Copy the template run, its history and its sleeps as runs `first` .. `first + count - 1`."""
    sqlite = db.dialect == "sqlite"
    new_id = "printf('%026d', n)" if sqlite else "lpad(n::text, 26, '0')"
    series = (
        "(WITH RECURSIVE s(n) AS (SELECT $2 UNION ALL SELECT n + 1 FROM s WHERE n < $3)"
        " SELECT n FROM s) AS seq"
        if sqlite
        else "generate_series($2::bigint, $3::bigint) AS seq(n)"
    )
    changed = {
        "runs": {
            "id": new_id,
            "created_at": "t.created_at - n",
            "updated_at": "t.updated_at - n",
            "ready_at": "t.ready_at - n",
            "rank": "t.rank - n",
            "finished_at": "t.finished_at - n",
            "wake_at": "t.wake_at + n",
        },
        "state_transitions": {
            "run_id": new_id,
            "entity_id": f"CASE WHEN t.entity = 'run' THEN {new_id} ELSE t.entity_id END",
            "at": "t.at - n",
        },
        "sleeps": {"run_id": new_id, "wake_at": "t.wake_at + n"},
    }

    async def copy(tx: Tx) -> None:
        for table, exprs in changed.items():
            columns = [c for c in await _columns(tx, db.dialect, table) if c != "seq"]
            key = "id" if table == "runs" else "run_id"
            values = ", ".join(exprs.get(c, f"t.{c}") for c in columns)
            await tx.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values}"
                f" FROM {series}, {table} t WHERE t.{key} = $1",
                template,
                first,
                first + count - 1,
            )

    await db.write(copy)


async def _fill(app: FastAPI, client: httpx.AsyncClient, finished: int) -> str:
    """`finished` finished runs and a tenth as many sleeping; the id of one finished run."""
    db: Database = app.state.db
    done, sleeping = await _templates(client)
    for template, first, count in ((done, 1, finished), (sleeping, finished + 1, finished // 10)):
        for start in range(first, first + count, BATCH):
            await _copy(db, template, start, min(BATCH, first + count - start))
    if db.dialect == "postgresql":  # what autovacuum does soon after a bulk load
        async with db.transaction() as tx:
            await tx.execute("ANALYZE")
    return f"{finished // 2:026d}"


# -- measuring ---------------------------------------------------------------------------


async def _timed(samples: int, operation: Callable[[int], Awaitable[None]]) -> Latencies:
    latency = Latencies()
    for i in range(samples):
        began = time.perf_counter()
        await operation(i)
        latency.samples.append(time.perf_counter() - began)
    return latency


async def _measure(
    app: FastAPI, client: httpx.AsyncClient, finished_id: str, samples: int
) -> dict[str, Latencies]:
    timers = app.state.timers

    async def empty(versions: list[str]) -> None:
        if await _claim(client, versions):
            raise BenchError("an empty poll claimed a run")

    async def start(_: int) -> None:
        body = {"workflow": WORKFLOW, "version": "live", "input": 1}
        await _call(client, "POST", "/runs", json=body)

    async def claim(_: int) -> None:
        runs = await _claim(client, ["live"])
        if not runs:
            raise BenchError("a claim found no run")
        claimed.append(runs[0]["run"])

    async def timer_pass(_: int) -> None:
        if await timers.run_once():
            raise BenchError("a timer pass found something due")
        await timers._next_due()

    async def detail(_: int) -> None:
        run = await _call(client, "GET", f"/runs/{finished_id}")
        if run["status"] != "completed":
            raise BenchError(f"run detail of a finished run says {run['status']}")

    async def listing(_: int) -> None:
        page = await _call(client, "GET", "/runs", params={"limit": 50})
        if len(page["runs"]) != 50:
            raise BenchError("the first page of runs is not full")

    claimed: list[dict[str, Any]] = []
    figures = {
        "empty poll x1": await _timed(samples, lambda _: empty(["none"])),
        "empty poll x5": await _timed(samples, lambda _: empty([f"none-{i}" for i in range(5)])),
        "start": await _timed(samples, start),
        "claim": await _timed(samples, claim),
        "timer pass": await _timed(samples, timer_pass),
        "list runs": await _timed(samples, listing),
        "run detail": await _timed(samples, detail),
    }
    for run in claimed:  # untimed
        await _transition(client, run, {"kind": "complete", "result": 1})
    return figures


@asynccontextmanager
async def _database(kind: str, opts: Options, folder: Path, name: str) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / name}.db"
        return
    async with fresh_schema(opts.pg_url, prefix="bench_scale") as url:
        yield url


async def _one(kind: str, opts: Options, folder: Path, finished: int) -> dict[str, Latencies]:
    name = f"{finished}-runs"
    async with _database(kind, opts, folder, name) as url:
        app = create_app(url, ServerSettings(allowed_hosts=("*",)))
        async with serving(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://aiki/api/v1"
            ) as client:
                began = time.perf_counter()
                finished_id = await _fill(app, client, finished)
                took = time.perf_counter() - began
                print(
                    f"  {kind}: {finished} finished and {finished // 10} sleeping runs"
                    f" written in {took:.0f} s"
                )
                await _measure(app, client, finished_id, 20)  # warm up
                return await _measure(app, client, finished_id, opts.samples)


def _row(what: str, small: Latencies, big: Latencies) -> str:
    ratio = big.percentile(0.5) / small.percentile(0.5)
    return (
        f"  {what:<14} small p50 {small.percentile(0.5) * 1000:7.2f} ms"
        f" | big p50 {big.percentile(0.5) * 1000:7.2f} ms p99 {big.percentile(0.99) * 1000:7.2f} ms"
        f" | big / small {ratio:5.2f}{'' if ratio <= 1.5 else '  (over 1.5)'}"
    )


async def _main(opts: Options) -> int:
    kinds = ["sqlite", "postgresql"] if opts.db == "both" else [opts.db]
    with tempfile.TemporaryDirectory(prefix="aiki-scale-bench-") as folder:
        for kind in kinds:
            small = await _one(kind, opts, Path(folder), opts.small)
            big = await _one(kind, opts, Path(folder), opts.runs)
            print(f"{kind}: {opts.runs} finished runs against {opts.small}, {opts.samples} samples")
            for what in OPERATIONS:
                print(_row(what, small[what], big[what]))
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point: `python bench/scale.py [options]`."""
    opts = _options(argv if argv is not None else sys.argv[1:])
    exit_with_status(lambda: anyio.run(_main, opts))


if __name__ == "__main__":
    main()
