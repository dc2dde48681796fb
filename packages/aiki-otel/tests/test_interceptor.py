"""`TracingInterceptor`'s hooks on their own, with the SDK's in-memory exporter.

The whole path (client, server process, worker process) is in tests/test_tracing.py;
here, what that path does not reach: a run without a trace context, a failed run, an
exception kept off the span, and the chain order of several interceptors.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from opentelemetry import baggage, context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from aiki_core import (
    ConsoleLogger,
    ErrorInfo,
    Interceptor,
    RunExecutionInfo,
    RunId,
    RunStatus,
    StartRunInfo,
    TaskExecutionInfo,
)
from aiki_core.sdk import TaskAttemptInfo, intercepted
from aiki_core.wire import (
    ClaimRequest,
    FailRun,
    RunSummary,
    StartRunRequest,
    StartRunResponse,
    TaskAddress,
    WorkflowCapability,
)
from aiki_otel import TracingInterceptor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiki_client import Client
    from aiki_core.wire import RunAction

NOW = datetime(2030, 1, 1, tzinfo=UTC)
RUN = RunSummary(
    id=RunId("01JZZZZZZZZZZZZZZZZZZZZZZZ"),
    namespace="default",
    workflow="orders",
    version="1",
    status=RunStatus.RUNNING,
    pool="default",
    revision=2,
    attempt=1,
    created_at=NOW,
    updated_at=NOW,
)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def _tracing(exporter: InMemorySpanExporter, *, record_exceptions: bool = True) -> Interceptor:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return TracingInterceptor(tracer_provider=provider, record_exceptions=record_exceptions)


async def test_a_run_without_a_trace_context_begins_a_trace(
    exporter: InMemorySpanExporter,
) -> None:
    tracing = _tracing(exporter)

    async def fail() -> RunAction:
        return FailRun(error=ErrorInfo(type="ValueError", message="bad order", retryable=False))

    action = await intercepted(
        [tracing], lambda i: i.execute_run, RunExecutionInfo(RUN, None), fail
    )

    assert isinstance(action, FailRun)
    (span,) = exporter.get_finished_spans()
    assert span.name == "aiki.run"
    assert span.parent is None
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError"
    assert span.attributes is not None
    assert span.attributes["aiki.run.outcome"] == "fail"
    assert span.attributes["aiki.run.revision"] == 2


@pytest.mark.parametrize("record", [True, False])
async def test_a_failed_attempt_has_error_status_and_its_exception_if_asked(
    exporter: InMemorySpanExporter, record: bool
) -> None:
    tracing = _tracing(exporter, record_exceptions=record)
    attempt = TaskAttemptInfo(
        run_id=RUN.id,
        task_name="charge",
        address=TaskAddress("charge:abc"),
        occurrence=0,
        attempt=3,
        log=ConsoleLogger(),
    )

    async def attempt_fails() -> None:
        raise ConnectionError("card 4242 declined")

    with pytest.raises(ConnectionError):
        await intercepted(
            [tracing], lambda i: i.execute_task, TaskExecutionInfo(RUN, attempt), attempt_fails
        )

    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ConnectionError"
    assert span.attributes is not None
    assert span.attributes["aiki.task.attempt"] == 3
    recorded = [event.attributes for event in span.events if event.name == "exception"]
    assert [dict(e or {}).get("exception.message") for e in recorded] == (
        ["card 4242 declined"] if record else []
    )


async def test_the_first_interceptor_listed_is_the_outermost(
    exporter: InMemorySpanExporter,
) -> None:
    calls: list[str] = []

    class Note(Interceptor):
        def __init__(self, name: str) -> None:
            self.name = name

        async def start_run(
            self, info: StartRunInfo, proceed: Callable[[], Awaitable[StartRunResponse]]
        ) -> StartRunResponse:
            calls.append(f"{self.name} sees {sorted(info.trace_context)}")
            return await proceed()

    async def start() -> StartRunResponse:
        calls.append("start")
        return StartRunResponse(run=RUN, created=True)

    info = StartRunInfo("orders", "1", RUN.id)
    await intercepted(
        [Note("outer"), _tracing(exporter), Note("inner")], lambda i: i.start_run, info, start
    )

    assert calls == ["outer sees []", "inner sees ['traceparent']", "start"]
    (span,) = exporter.get_finished_spans()
    assert info.trace_context["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"


async def test_baggage_the_wire_cannot_hold_is_left_out_not_a_failed_start(
    client: Client, exporter: InMemorySpanExporter
) -> None:
    """A propagator's oversized entry must not turn a traced start into a 422."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    propagator = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    tracing = TracingInterceptor(tracer_provider=provider, propagator=propagator)
    client.interceptors = (tracing,)
    token = context.attach(baggage.set_baggage("blob", "x" * 3000))
    try:
        await client.start_run(StartRunRequest(workflow="orders", version="1"), lambda v: v)
    finally:
        context.detach(token)

    claimed = await client.claim(
        ClaimRequest(
            worker_id="w", capabilities=[WorkflowCapability(workflow="orders", version="1")]
        )
    )
    (run,) = claimed.runs
    assert run.trace_context is not None
    assert set(run.trace_context) == {"traceparent"}
    (span,) = exporter.get_finished_spans()
    assert run.trace_context["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"
