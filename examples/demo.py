"""The demo: an order-processing workflow on the embedded default server.

It starts the server on a temporary SQLite file (real HTTP on a free loopback port),
a worker, and one run of `examples/order_processing.py`, whose card charge fails once
and is retried; then it prints the run's task timeline.
"""

from __future__ import annotations

import socket
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import anyio
import uvicorn

from aiki import Client, ConsoleLogger, LogLevel, Worker
from aiki_server import create_app

sys.path.insert(0, str(Path(__file__).parent))

from order_processing import Order, orders_v1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def say(text: str) -> None:
    """Print a line of the demo's story."""
    print(text, flush=True)  # noqa: T201 - the demo talks to a person


async def main() -> None:
    """Run the demo."""
    db = Path(tempfile.mkdtemp(prefix="aiki-demo-")) / "aiki.db"
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(f"sqlite:///{db}"), port=port, log_level="warning")
    )
    logger = ConsoleLogger(LogLevel.WARN)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await anyio.sleep(0.01)
        say(f"server: embedded, SQLite at {db}, http://127.0.0.1:{port}")
        async with (
            Client(f"http://127.0.0.1:{port}", logger=logger) as client,
            Worker(client, [orders_v1], max_concurrent_runs=4),
        ):
            order = Order(order_id="o-1001", amount=4200, items=["book", "lamp"])
            handle = await orders_v1.start(client, order, reference_id=order.order_id)
            say(f"started run {handle.id} of order-processing 1.0.0")
            receipt = await handle.result(timeout=timedelta(seconds=30))
            say(f"completed: {receipt.model_dump_json()}")
            detail = await handle.detail()
            say("\ntask timeline:")
            for record in detail.tasks:
                for attempt in record.attempts:
                    took = (attempt.finished_at or attempt.started_at) - attempt.started_at
                    error = f"  ({attempt.error.message})" if attempt.error else ""
                    say(
                        f"  {attempt.started_at:%H:%M:%S.%f}"[:-3]
                        + f"  {record.name:<14} attempt {attempt.attempt}"
                        + f"  {attempt.status.value:<15} {took.total_seconds() * 1000:6.1f} ms"
                        + error
                    )
            say("\nrun history:")
            for step in detail.history:
                if step.entity == "run":
                    say(f"  {step.from_status or '-':>9} -> {step.to_status:<10} {step.reason}")
        server.should_exit = True


if __name__ == "__main__":
    anyio.run(main)
