"""The demo: an order-processing workflow on the default server, SQLite.

It starts `aiki-server` on a temporary SQLite file (a process of its own, on a free
loopback port), a worker, and one run of `examples/order_processing.py`, whose card
charge fails once and is retried; then it prints the run's task timeline.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import anyio

from aiki import Client, ConsoleLogger, LogLevel, Worker
from aiki_server.testing import server_process

sys.path.insert(0, str(Path(__file__).parent))

from order_processing import Order, orders_v1


def say(text: str) -> None:
    """Print a line of the demo's story."""
    print(text, flush=True)  # noqa: T201 - the demo talks to a person


async def main() -> None:
    """Run the demo."""
    db = Path(tempfile.mkdtemp(prefix="aiki-demo-")) / "aiki.db"
    logger = ConsoleLogger(LogLevel.WARN)
    async with server_process(f"sqlite:///{db}") as server:
        say(f"server: aiki-server (pid {server.pid}), SQLite at {db}, {server.base_url}")
        async with (
            Client(server.base_url, logger=logger) as client,
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


if __name__ == "__main__":
    anyio.run(main)
