"""`TracingInterceptor`: an `aiki_core.Interceptor` that makes OpenTelemetry spans.

- `aiki.start_run` (producer): a client's start of a run, or a run's start of a child.
  Its context is written into the start's carrier, which the server stores with the
  run.
- `aiki.run` (consumer): one execution of a run on a worker, a child of the start's
  span (from the stored carrier). A run that sleeps or waits is executed again when it
  resumes: one span per execution, all under the same start, told apart by
  `aiki.run.revision` (one claim each).
- `aiki.task`: one attempt of a task that really runs, a child of its execution's span.
  A replayed call (its result on record) runs nothing, so it makes no span.

A run whose starter wrote no carrier (a schedule's, or a client without the
interceptor) begins a trace of its own at each execution.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from aiki_core import Interceptor
from aiki_core.wire import FailRun
from aiki_otel.__about__ import __version__

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, TracerProvider
    from opentelemetry.util.types import Attributes
    from pydantic import JsonValue

    from aiki_core import RunExecutionInfo, StartRunInfo, TaskExecutionInfo
    from aiki_core.wire import RunAction, RunSummary, StartRunResponse

__all__ = ["TracingInterceptor"]


def _run_attributes(run: RunSummary) -> dict[str, str | int]:
    return {
        "aiki.run.id": run.id,
        "aiki.workflow": run.workflow,
        "aiki.version": run.version,
        "aiki.run.attempt": run.attempt,
        "aiki.run.revision": run.revision,
    }


class TracingInterceptor(Interceptor):
    """Spans of starts (`aiki.start_run`), executions (`aiki.run`) and attempts (`aiki.task`).

    Give the same one to the client that starts runs and to the worker. Spans go to
    `tracer_provider` (default: the global one); the trace context is written and read
    with `propagator` (default: the global one, W3C `traceparent` unless configured).
    A failed attempt or run sets its span's status to error; the exception is recorded
    on the span unless `record_exceptions` is false (its message may hold what a
    payload codec would seal: without it, the status names the error's type only).
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
        record_exceptions: bool = True,
    ) -> None:
        self._tracer = trace.get_tracer("aiki_otel", __version__, tracer_provider)
        self._propagator = propagator
        self._record_exceptions = record_exceptions

    def _propagation(self) -> TextMapPropagator:
        return self._propagator or propagate.get_global_textmap()

    @contextmanager
    def _span(
        self,
        name: str,
        kind: SpanKind,
        attributes: Attributes,
        context: Context | None = None,
    ) -> Iterator[Span]:
        with self._tracer.start_as_current_span(
            name,
            context=context,
            kind=kind,
            attributes=attributes,
            record_exception=self._record_exceptions,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    async def start_run(
        self, info: StartRunInfo, proceed: Callable[[], Awaitable[StartRunResponse]]
    ) -> StartRunResponse:
        """An `aiki.start_run` span, whose context is stored with the run."""
        attributes: dict[str, str] = {
            "aiki.run.id": info.run_id,
            "aiki.workflow": info.workflow,
            "aiki.version": info.version,
        }
        if info.parent_run_id is not None:
            attributes["aiki.parent_run.id"] = info.parent_run_id
        with self._span("aiki.start_run", SpanKind.PRODUCER, attributes) as span:
            self._propagation().inject(info.trace_context)
            started = await proceed()
            span.set_attribute("aiki.run.created", started.created)
            return started

    async def execute_run(
        self, info: RunExecutionInfo, proceed: Callable[[], Awaitable[RunAction]]
    ) -> RunAction:
        """An `aiki.run` span, under the start's (or a new trace's root, without one)."""
        # an empty context, not this process's current one: the run belongs to its starter
        parent = self._propagation().extract(dict(info.trace_context or {}), context=Context())
        with self._span(
            "aiki.run", SpanKind.CONSUMER, _run_attributes(info.run), context=parent
        ) as span:
            action = await proceed()
            span.set_attribute("aiki.run.outcome", action.kind)
            if isinstance(action, FailRun):
                span.set_status(Status(StatusCode.ERROR, action.error.type))
            return action

    async def execute_task(
        self, info: TaskExecutionInfo, proceed: Callable[[], Awaitable[JsonValue]]
    ) -> JsonValue:
        """An `aiki.task` span around the attempt."""
        attempt = info.attempt
        attributes = {
            **_run_attributes(info.run),
            "aiki.task.name": attempt.task_name,
            "aiki.task.attempt": attempt.attempt,
            "aiki.task.occurrence": attempt.occurrence,
        }
        with self._span("aiki.task", SpanKind.INTERNAL, attributes):
            return await proceed()
