"""What the server reports about runs: the resources of the HTTP API.

A `RunSummary` is one row of a listing; a `RunDetail` adds everything the run
recorded (task calls with their attempts, sleeps, event waits and events, children)
and its state history. Payload fields (`input`, `result`, `data`) hold what the
client's codec produced, which the server never reads.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field, JsonValue

from aiki_core._error_info import ErrorInfo
from aiki_core._ids import EventId, Namespace, PoolName, RunId, ScheduleId, TaskAddress, TaskId
from aiki_core._parent_close import ParentClosePolicy
from aiki_core._status import RunStatus, TaskStatus
from aiki_core._wire import Count, Ordinal, ResponseModel

__all__ = [
    "ChildRecord",
    "EventOrigin",
    "EventRecord",
    "EventWaitRecord",
    "PendingWait",
    "RunDetail",
    "RunNotice",
    "RunOutcome",
    "RunSummary",
    "SleepRecord",
    "StateTransition",
    "TaskAttemptRecord",
    "TaskRecord",
]

EventOrigin = Literal["api", "webhook"]
"""How an event reached its run: sent through the API, or posted to a webhook URL."""


class RunSummary(ResponseModel):
    """A run's identity, routing and status."""

    id: RunId
    namespace: Namespace
    workflow: str
    version: str
    status: RunStatus
    pool: PoolName
    revision: Count = Field(description="Bumped by every claim; fences stale workers.")
    attempt: Ordinal = Field(description="Workflow-level attempt (retries of the whole run).")
    reference_id: str | None = None
    parent_run_id: RunId | None = None
    schedule_id: ScheduleId | None = Field(
        default=None, description="The schedule that fired the run (its input is the schedule's)."
    )
    created_at: AwareDatetime
    updated_at: AwareDatetime
    start_at: AwareDatetime | None = Field(default=None, description="A delayed start's due time.")
    deadline_at: AwareDatetime | None = Field(default=None, description="When the run times out.")
    finished_at: AwareDatetime | None = None
    pause_requested: bool = Field(
        default=False,
        description="A running run was paused: its worker stops at the next task boundary,"
        " and the run becomes `paused`.",
    )
    continued_as: RunId | None = Field(
        default=None,
        description="The run this one continued as (`run.continue_as_new`): it ended as"
        " completed without a result of its own, and its handle's `result()` follows it.",
    )
    continued_from: RunId | None = Field(
        default=None, description="The run that continued as this one."
    )
    priority: int = Field(default=0, description="0 (lowest) to 9; higher is claimed first.")
    concurrency_key: str | None = Field(
        default=None, description="The key its workflow's concurrency limit counts it under."
    )


class RunOutcome(RunSummary):
    """A run with its result or error: what a status wait answers."""

    result: JsonValue = None
    error: ErrorInfo | None = None


class TaskAttemptRecord(ResponseModel):
    """One attempt of a task call."""

    attempt: Ordinal
    status: TaskStatus
    run_attempt: Ordinal = Field(default=1, description="The run's attempt that made it.")
    started_at: AwareDatetime
    finished_at: AwareDatetime | None = None
    error: ErrorInfo | None = None


class TaskRecord(ResponseModel):
    """One task call of a run: its address, attempts and outcome.

    `occurrence` counts calls with the same address (0 for the first), so the n-th
    identical call on replay takes the n-th recorded result. `run_attempt` is the
    workflow-level attempt of the run that last wrote it: a call that failed for good
    in an earlier attempt runs again in a later one.
    """

    id: TaskId
    name: str
    address: TaskAddress
    occurrence: Count
    status: TaskStatus
    input: JsonValue = None
    result: JsonValue = None
    error: ErrorInfo | None = None
    attempts: list[TaskAttemptRecord] = Field(default_factory=list)
    next_attempt_at: AwareDatetime | None = None
    created_at: AwareDatetime
    finished_at: AwareDatetime | None = None
    run_attempt: Ordinal = 1
    notice: str | None = Field(
        default=None, description="What the replay that made this call noticed (a divergence)."
    )


class SleepRecord(ResponseModel):
    """A durable sleep, identified by name and occurrence.

    `withdrawn`: the run stopped waiting on it without its time coming (the branch of
    code that slept lost a race, say); a replay that sleeps on it again revives it.
    """

    name: str
    occurrence: Count
    status: Literal["sleeping", "completed", "woken", "withdrawn"]
    wake_at: AwareDatetime
    completed_at: AwareDatetime | None = None


class EventWaitRecord(ResponseModel):
    """A wait for an event, identified by event name and occurrence.

    `withdrawn`: the run stopped waiting without an event (the branch of code that
    waited lost a race, say); it takes no event, unless a replay waits on it again.
    """

    name: str
    occurrence: Count
    status: Literal["waiting", "received", "timed_out", "withdrawn"]
    timeout_at: AwareDatetime | None = None
    event_id: EventId | None = None


class EventRecord(ResponseModel):
    """An event delivered to a run; kept until a wait consumes it."""

    id: EventId
    name: str
    reference_id: str | None = None
    data: JsonValue = None
    origin: EventOrigin = Field(
        default="api",
        description="`api`: sent by a client, its data as the client's codec sealed it; "
        "`webhook`: delivered to a webhook URL, its data as the sender posted it.",
    )
    received_at: AwareDatetime
    consumed: bool = False


class ChildRecord(ResponseModel):
    """A child run started by this run, identified like a task call."""

    run_id: RunId
    workflow: str
    version: str
    address: TaskAddress
    occurrence: Count
    status: RunStatus
    result: JsonValue = None
    error: ErrorInfo | None = None


class PendingWait(ResponseModel):
    """One thing a suspended run waits for; the first that ends re-queues the run.

    `name` and `occurrence` tell a sleep or an event wait; a retry of a task call
    and a remote task attempt still running (`task`) have its `address` and
    `occurrence`, and a retry of the whole run neither;
    `child_run_id` tells the child awaited. `due_at` is when the wait ends by itself
    (a sleep's time, an event's timeout, a retry's back-off), on the server's clock.
    """

    kind: Literal["sleep", "event", "child", "retry", "task"]
    name: str | None = None
    occurrence: Count | None = None
    address: TaskAddress | None = None
    child_run_id: RunId | None = None
    due_at: AwareDatetime | None = None
    reason: str | None = Field(
        default=None, description="Why, when the wait says (a rate limit's next unit, say)."
    )


class StateTransition(ResponseModel):
    """One row of the append-only history: a status change of a run or of a task."""

    seq: int = Field(ge=1, description="Position in the run's history, from 1.")
    run_id: RunId
    entity: Literal["run", "task"]
    entity_id: str
    from_status: str | None = Field(description="`None` when the entity was created.")
    to_status: str
    reason: str | None = None
    revision: Count
    at: AwareDatetime


class RunNotice(ResponseModel):
    """Something a replay of the run noticed and reported.

    Such as a divergence from its history: a task called with an input that was never
    recorded while recorded calls of the same task stayed unused (nondeterministic code).
    """

    task_id: TaskId = Field(description="The task call the replay made when it noticed.")
    at: AwareDatetime
    message: str


class RunDetail(RunSummary):
    """A run with everything it recorded and its full history."""

    input: JsonValue = None
    result: JsonValue = None
    error: ErrorInfo | None = None
    tasks: list[TaskRecord] = Field(default_factory=list)
    sleeps: list[SleepRecord] = Field(default_factory=list)
    event_waits: list[EventWaitRecord] = Field(default_factory=list)
    events: list[EventRecord] = Field(default_factory=list)
    children: list[ChildRecord] = Field(default_factory=list)
    waits: list[PendingWait] = Field(
        default_factory=list,
        description="What the run waits for while it is suspended (empty otherwise).",
    )
    history: list[StateTransition] = Field(default_factory=list)
    notices: list[RunNotice] = Field(default_factory=list)
    pending_reason: str | None = Field(
        default=None,
        description="Why a queued run is not running (no worker serves its version, say), or"
        " which long remote task attempts a suspended run waits for (each task and its"
        " endpoint), whatever its status says (`sleeping` beside one, say); for a run"
        " suspended or paused, also that no live worker serves its version.",
    )
    parent_close_policy: ParentClosePolicy | None = Field(
        default=None,
        description="A child's: what the server does with it when its parent ends.",
    )
    timer_failures: Count = Field(
        default=0,
        description="Times in a row the server failed to act on the run's due time (a"
        " wake-up, its deadline, an idle claim); from 5 on it is set aside until the run"
        " moves otherwise (cancel it, say).",
    )
    timer_error: ErrorInfo | None = Field(
        default=None, description="Why the server last failed to act on the run's due time."
    )
