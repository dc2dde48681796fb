"""`Interceptor`: hooks around what the engine does, for tracing and the like.

Three hooks, each given what it is about and a `proceed` to call for the work itself
(as the interceptors of Temporal's SDK and the instrumentations of OpenTelemetry wrap
a call):

- `start_run`: a client starts a run, or a run starts a child; the hook may write
  the caller's trace context into `info.trace_context`, which is stored with the run;
- `execute_run`: a worker executes a claimed run, once per execution (a run that
  sleeps and resumes is executed again, with its history replayed);
- `execute_task`: one attempt of a task really runs. A replayed call, whose result is
  on record, runs nothing and calls no hook.

The client and the worker take a list (`interceptors=[...]`); the first one listed is
the outermost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from pydantic import JsonValue

    from aiki_core._api import RunAction, StartRunResponse
    from aiki_core._ids import RunId
    from aiki_core._protocols import TaskAttemptInfo
    from aiki_core._records import RunSummary

__all__ = [
    "Interceptor",
    "RunExecutionInfo",
    "StartRunInfo",
    "TaskExecutionInfo",
    "intercepted",
]

T = TypeVar("T")
InfoT = TypeVar("InfoT")


@dataclass(slots=True)
class StartRunInfo:
    """A run about to be started, by a client or (as a child) by a run."""

    workflow: str
    version: str
    run_id: RunId
    parent_run_id: RunId | None = None
    """The run that starts it as its child; `None` for a client's start."""
    trace_context: dict[str, str] = field(default_factory=dict)
    """Written by the hooks: the carrier stored with the run (`traceparent`, `tracestate`)."""


@dataclass(frozen=True, slots=True)
class RunExecutionInfo:
    """One execution of a claimed run on a worker."""

    run: RunSummary
    trace_context: Mapping[str, str] | None
    """The carrier stored when the run was started, if its starter wrote one."""


@dataclass(frozen=True, slots=True)
class TaskExecutionInfo:
    """One attempt of a task call that really runs (never a replayed one)."""

    run: RunSummary
    attempt: TaskAttemptInfo


class Interceptor:
    """Hooks around starts, run executions and task attempts; each passes through here.

    Subclass it and override the hooks you need; each must call `proceed()` once and
    return (or raise) what it gives.
    """

    async def start_run(
        self, info: StartRunInfo, proceed: Callable[[], Awaitable[StartRunResponse]]
    ) -> StartRunResponse:
        """Around the start of a run (a client's, or a run's start of a child)."""
        return await proceed()

    async def execute_run(
        self, info: RunExecutionInfo, proceed: Callable[[], Awaitable[RunAction]]
    ) -> RunAction:
        """Around one execution of a run; `proceed()` gives what the worker reports."""
        return await proceed()

    async def execute_task(
        self, info: TaskExecutionInfo, proceed: Callable[[], Awaitable[JsonValue]]
    ) -> JsonValue:
        """Around one attempt of a task; `proceed()` raises what the attempt raised."""
        return await proceed()


async def intercepted(
    interceptors: Sequence[Interceptor],
    hook: Callable[[Interceptor], Callable[[InfoT, Callable[[], Awaitable[T]]], Awaitable[T]]],
    info: InfoT,
    proceed: Callable[[], Awaitable[T]],
) -> T:
    """Call `proceed` through `hook` of every interceptor, the first listed outermost.

    `hook` picks the hook: `lambda i: i.execute_task`.
    """
    for interceptor in reversed(interceptors):
        proceed = partial(hook(interceptor), info, proceed)
    return await proceed()
