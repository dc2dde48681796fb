"""The Restate side of `peers_compare.py`: the benchmark's service, served to a Restate server.

`peers_compare.py` runs this file as a subprocess, which serves the SDK's ASGI app with
hypercorn in one process (HTTP/2 cleartext, which the Restate server speaks to its
services) until SIGTERM; it registers the service with the server's admin API and
invokes its handlers through the server's ingress:

    python bench/_restate_workload.py --port PORT

The handlers mirror `_dbos_workload.py` and `_aiki_workload.py`: one handler per
workload (so each count in the server's tables is its own check), each running `count`
durable steps (`ctx.run_typed`) in sequence, every step returning a small dict. A
service, not a Restate workflow: a workflow's handler needs a key of its own per run,
and a service handler is Restate's cheapest durable invocation (every step is journaled
all the same).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import anyio
import hypercorn.asyncio
import restate
from hypercorn.config import Config
from restate.server import install_shutdown_hook

SERVICE = "bench"

service = restate.Service(SERVICE)


async def step(i: int) -> dict[str, Any]:
    """A step that returns a small dict."""
    return {"step": i, "ok": True, "label": f"step-{i}"}


async def _steps(ctx: restate.Context, count: int) -> int:
    total = 0
    for i in range(count):
        total += (await ctx.run_typed(f"step-{i}", step, restate.RunOptions(), i))["step"]
    return total


@service.handler("warmup")
async def warmup(ctx: restate.Context, count: int) -> int:
    """Warm-up runs."""
    return await _steps(ctx, count)


@service.handler("latency_1")
async def latency_1(ctx: restate.Context, count: int) -> int:
    """The 1-step latency workload."""
    return await _steps(ctx, count)


@service.handler("latency_10")
async def latency_10(ctx: restate.Context, count: int) -> int:
    """The 10-step latency workload."""
    return await _steps(ctx, count)


@service.handler("throughput")
async def throughput(ctx: restate.Context, count: int) -> int:
    """The throughput workload."""
    return await _steps(ctx, count)


app = restate.app([service])


async def serve(port: int) -> None:
    """Serve `app` on 127.0.0.1:`port` in this process (HTTP/2 cleartext too), until SIGTERM."""
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    stop = anyio.Event()
    # The SDK's app takes SIGTERM for itself on its first request (`loop.add_signal_handler`,
    # which replaces the handler of any server before it, so hypercorn alone never stops);
    # a hook in the SDK's own list hears it too.
    install_shutdown_hook(asyncio.get_running_loop(), stop.set, signal.SIGTERM)
    await hypercorn.asyncio.serve(app, config, shutdown_trigger=stop.wait)


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description="The Restate service of Aiki's peer benchmark.")
    parser.add_argument("--port", type=int, required=True, help="the port on 127.0.0.1")
    anyio.run(serve, parser.parse_args().port)


if __name__ == "__main__":
    main()
