"""What the server's metrics cost one run on the hot path, beside the same path without them.

The metrics are counted in memory: `HttpMetrics` wraps every request, and the run,
task and transaction counters are plain dictionary updates. This script times, in one
process and back to back,

1. a minimal ASGI request (answered at once) called bare, and wrapped by `HttpMetrics`;
2. the counting a 3-task run does besides: `run_started`, `run_claimed`, three
   `task_attempt`s, `run_ended`, and one `transaction` per write;

and prints what they add per 3-task run, in microseconds, and as a share of the server
CPU per run that `hatch run bench:peers` measured (`--server-cpu-ms`). The dashboard is not
timed: its routes sit after the API's, so an API request never reaches them.

Run it with `hatch run bench:metrics` (`--help` for the options).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING

from aiki_server._metrics import HttpMetrics, Metrics

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS_PER_RUN = 6
"""A 3-task run's requests on the hot path: start, claim, three task records, complete."""
WRITES_PER_RUN = 6
"""Its write transactions: one per request that writes (the claim included)."""
RUN = {"workflow": "bench", "version": "1", "created_at": 0, "ready_at": 0}


async def _answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    return None


def _scope() -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/runs/r/tasks",
        "aiki.route": "/api/v1/runs/{run_id}/tasks",
        "headers": [],
    }


async def _per_request(app: ASGIApp, requests: int) -> float:
    """Seconds per request through `app`."""
    scope = _scope()
    started = time.perf_counter()
    for _ in range(requests):
        await app(scope, _receive, _send)
    return (time.perf_counter() - started) / requests


def _per_run_counting(metrics: Metrics, runs: int) -> float:
    """Seconds per run of the counting a 3-task run does besides its requests."""
    started = time.perf_counter()
    for _ in range(runs):
        metrics.run_started(RUN)
        metrics.run_claimed(RUN, 5)
        for _ in range(3):
            metrics.task_attempt("step", "completed", 0.001)
        for _ in range(WRITES_PER_RUN):
            metrics.transaction(0.0004)
        metrics.run_ended(RUN, "completed", 20)
    return (time.perf_counter() - started) / runs


async def _measure(rounds: int, requests: int) -> tuple[float, float, float]:
    """Best of `rounds`: bare request, wrapped request, counting per run (seconds)."""
    metrics = Metrics()
    wrapped = HttpMetrics(_answer, metrics=metrics, prefixes={})
    bare = min([await _per_request(_answer, requests) for _ in range(rounds)])
    measured = min([await _per_request(wrapped, requests) for _ in range(rounds)])
    counting = min(_per_run_counting(metrics, requests // 4) for _ in range(rounds))
    return bare, measured, counting


def main() -> None:
    """Measure, then print the figures per request and per run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best counts")
    parser.add_argument(
        "--server-cpu-ms",
        type=float,
        action="append",
        default=[],
        metavar="MS",
        help="server CPU per 3-task run from bench:peers, to print the metrics' share of"
        " (repeatable: one per database)",
    )
    args = parser.parse_args()
    bare, wrapped, counting = asyncio.run(_measure(args.rounds, args.requests))
    middleware = wrapped - bare
    per_run = REQUESTS_PER_RUN * middleware + counting
    print(f"request answered bare:             {bare * 1e6:7.2f} µs")
    print(f"request through HttpMetrics:       {wrapped * 1e6:7.2f} µs")
    print(f"HttpMetrics per request:           {middleware * 1e6:7.2f} µs")
    print(f"counting per 3-task run (no HTTP): {counting * 1e6:7.2f} µs")
    print(
        f"metrics per 3-task run:            {per_run * 1e6:7.2f} µs"
        f" ({REQUESTS_PER_RUN} requests, {WRITES_PER_RUN} transactions)"
    )
    for cpu_ms in args.server_cpu_ms:
        share = per_run * 1e3 / cpu_ms
        print(f"share of {cpu_ms:.2f} ms server CPU per run:  {share:.1%}")


if __name__ == "__main__":
    main()
