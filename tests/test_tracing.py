"""One trace across processes: start → executions of the run → task attempts → child run.

A client in the test's process, traced with `aiki_otel.TracingInterceptor` into the
OpenTelemetry SDK's in-memory exporter, starts a run on a real server process (SQLite
and PostgreSQL); a worker process (`tracing_app.py`), traced by the same interceptor,
writes its spans to a file. The run's task fails once and is retried, the run sleeps
durably (the worker lets it go, and executes it again when the sleep is over), then
starts a child and waits for it (executed a third time when the child has ended).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel
from aiki_otel import TracingInterceptor
from tracing_app import order_v1

if TYPE_CHECKING:
    from live_processes import LiveProcesses

APP = Path(__file__).with_name("tracing_app.py")


def _spans(spans: list[dict[str, Any]], name: str, run_id: str) -> list[dict[str, Any]]:
    """The spans called `name` of run `run_id`, in the order they ended."""
    return [
        span
        for span in spans
        if span["name"] == name and span["attributes"]["aiki.run.id"] == run_id
    ]


async def test_one_trace_from_the_start_to_the_child_run(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    spans_file = tmp_path / "worker-spans.jsonl"
    await processes.spawn("worker", [sys.executable, str(APP), server.base_url, str(spans_file)])
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = TracingInterceptor(tracer_provider=provider)

    async with Client(
        server.base_url, logger=ConsoleLogger(LogLevel.WARN), interceptors=[tracing]
    ) as client:
        handle = await order_v1.start(client, "order-7")
        assert await handle.result() == "charged order-7, packed order-7"
        child_id = (await handle.detail()).children[0].run_id

    # the client's span: the start, the root of the trace
    (start,) = exporter.get_finished_spans()
    assert start.name == "aiki.start_run"
    assert start.kind is SpanKind.PRODUCER
    assert start.parent is None
    assert start.attributes is not None
    assert start.attributes["aiki.run.id"] == handle.id
    assert start.attributes["aiki.workflow"] == "traced-order"
    assert start.attributes["aiki.run.created"] is True
    trace_id = f"0x{start.context.trace_id:032x}"
    start_span_id = f"0x{start.context.span_id:016x}"

    # the worker's spans, each ended before the worker reported what it ended in
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    assert {span["context"]["trace_id"] for span in spans} == {trace_id}
    runs = _spans(spans, "aiki.run", handle.id)
    # one span per execution: the first ends in the sleep, the second in the wait for
    # the child, the third completes; each under the client's start, on claims in turn
    assert [span["attributes"]["aiki.run.outcome"] for span in runs] == [
        "suspend",
        "suspend",
        "complete",
    ]
    assert {span["parent_id"] for span in runs} == {start_span_id}
    assert all(span["kind"] == "SpanKind.CONSUMER" for span in runs)
    revisions = [span["attributes"]["aiki.run.revision"] for span in runs]
    assert revisions == sorted(set(revisions))

    # the task's two attempts, both in the first execution; the replays ran none
    charges = _spans(spans, "aiki.task", handle.id)
    assert {span["attributes"]["aiki.task.name"] for span in charges} == {"charge"}
    assert [span["attributes"]["aiki.task.attempt"] for span in charges] == [1, 2]
    assert {span["parent_id"] for span in charges} == {runs[0]["context"]["span_id"]}
    assert [span["status"]["status_code"] for span in charges] == ["ERROR", "UNSET"]
    assert charges[0]["events"][0]["name"] == "exception"
    assert charges[0]["attributes"]["aiki.run.id"] == handle.id
    assert charges[0]["attributes"]["aiki.workflow"] == "traced-order"
    assert charges[0]["attributes"]["aiki.version"] == "1"

    # the child: started by the second execution, executed once, its task under it
    (child_start,) = _spans(spans, "aiki.start_run", child_id)
    assert child_start["parent_id"] == runs[1]["context"]["span_id"]
    assert child_start["attributes"]["aiki.parent_run.id"] == handle.id
    (child_run,) = _spans(spans, "aiki.run", child_id)
    assert child_run["parent_id"] == child_start["context"]["span_id"]
    assert child_run["attributes"]["aiki.workflow"] == "traced-ship"
    (pack,) = _spans(spans, "aiki.task", child_id)
    assert pack["attributes"]["aiki.task.name"] == "pack"
    assert pack["parent_id"] == child_run["context"]["span_id"]

    # nothing else: no span for a replayed task, a replayed child start, or a wait
    assert len(spans) == len(runs) + len(charges) + 3
