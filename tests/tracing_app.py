"""The traced application of tests/test_tracing.py: a worker process that exports its spans.

    python tests/tracing_app.py URL SPANS_FILE

The worker runs `order_v1` and `ship_v1` with `aiki_otel.TracingInterceptor`; every
span it ends is appended to SPANS_FILE as one line of JSON (the SDK's own form), which
the test reads.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel, RetryPolicy
from aiki_otel import TracingInterceptor
from aiki_task import task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, workflow

attempts: dict[str, int] = {}


@task("charge", retry=RetryPolicy.fixed(max_attempts=3, delay=timedelta(milliseconds=10)))
async def charge(order: str) -> str:
    """Fails its first attempt, then succeeds."""
    attempts[order] = attempts.get(order, 0) + 1
    if attempts[order] == 1:
        raise ConnectionError("the payment service hung up")
    return f"charged {order}"


@task("pack")
async def pack(order: str) -> str:
    """Packs an order."""
    return f"packed {order}"


ship = workflow("traced-ship")


@ship.v("1")
async def ship_v1(run: WorkflowRun, order: str) -> str:
    """A child: one task."""
    return await pack.start(run, order)


order = workflow("traced-order")


@order.v("1")
async def order_v1(run: WorkflowRun, order: str) -> str:
    """A task with a retry, a durable sleep, then a child run."""
    charged = await charge.start(run, order)
    await run.sleep("settle", timedelta(milliseconds=50))
    child = await ship_v1.start_child(run, order)
    return f"{charged}, {await child.result()}"


def _line(span: ReadableSpan) -> str:
    return json.dumps(json.loads(span.to_json()), separators=(",", ":")) + "\n"


async def main(url: str, spans_file: str) -> None:
    """Work for `url` until killed, exporting spans to `spans_file`."""
    provider = TracerProvider()
    with open(spans_file, "a") as out:  # noqa: ASYNC230 - opened once, before serving
        provider.add_span_processor(
            SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=_line))
        )
        tracing = TracingInterceptor(tracer_provider=provider)
        log = ConsoleLogger(LogLevel.WARN)
        async with Client(url, logger=log) as client:
            worker = Worker(
                client,
                [order_v1, ship_v1],
                interceptors=[tracing],
                claim_wait=timedelta(seconds=1),
                max_backoff=timedelta(milliseconds=200),
            )
            await worker.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
