"""Requests and responses of the HTTP API (`/api/v1`).

Client side: start a run, list runs, cancel, send an event. Worker side: claim runs,
heartbeat, record a task attempt, transition a run (complete, fail, suspend on
waits, release), and mint a signed webhook URL that delivers an event to it. Every
worker write carries the `revision` its claim returned; the server rejects a stale
one with `StaleRevisionError`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from aiki_core._canonical import canonical_json
from aiki_core._concurrency import ConcurrencyKey, ConcurrencySpec, Priority
from aiki_core._duration import Duration, DurationRange, duration_field
from aiki_core._error_info import ErrorInfo
from aiki_core._exceptions import ErrorCode
from aiki_core._ids import DEFAULT_POOL, EventId, RunId, TaskAddress, TaskId, WebhookId, WorkerId
from aiki_core._parent_close import ParentClosePolicy
from aiki_core._rate_limits import RateLimitUse
from aiki_core._records import (
    ChildRecord,
    EventRecord,
    EventWaitRecord,
    RunSummary,
    SleepRecord,
    TaskRecord,
)
from aiki_core._retry import RetryPolicy
from aiki_core._status import TASK_TERMINAL_STATUSES, RunStatus, TaskStatus
from aiki_core._wire import (
    ID,
    NO_NUL,
    ClientId,
    Count,
    Cursor,
    Fingerprint,
    Integer,
    Name,
    Ordinal,
    ReferenceId,
    RequestModel,
    ResponseModel,
    Timestamp,
    VersionName,
    given,
    requiring,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "AwaitChild",
    "AwaitEvent",
    "AwaitRetry",
    "AwaitSleep",
    "AwaitTask",
    "CancelRunRequest",
    "ClaimRequest",
    "ClaimResponse",
    "ClaimedRun",
    "CompleteRun",
    "ContinueRun",
    "CreateWebhookRequest",
    "CreateWebhookResponse",
    "ErrorBody",
    "ErrorResponse",
    "FailRun",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "ListRunsQuery",
    "MAX_CLAIMED_PER_POLL",
    "MAX_HELD_RUNS",
    "MAX_NOTICE_LENGTH",
    "MAX_WEBHOOK_LIFETIME",
    "MAX_WEBHOOK_SCHEMA_BYTES",
    "RecordTaskRequest",
    "RecordTaskResponse",
    "ReleaseRun",
    "RunAction",
    "RunDirective",
    "RunLease",
    "RunLeaseStatus",
    "RunPage",
    "RunWait",
    "SendEventRequest",
    "SendEventResponse",
    "StartChildRequest",
    "StartRunRequest",
    "StartRunResponse",
    "SuspendRun",
    "TransitionRunRequest",
    "TransitionRunResponse",
    "WorkflowCapability",
]

MAX_LONG_POLL = timedelta(seconds=60)
"""The longest a claim or a status wait may hold a request open."""

MAX_CLAIMED_PER_POLL = 1000
"""The most runs one claim may ask for (`ClaimRequest.max_runs`)."""

MAX_HELD_RUNS = 10_000
"""The most runs one heartbeat or directives poll may name: the most a worker may hold."""

WorkerName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
"""How a worker calls itself in its claims and heartbeats."""

StoredAddress = Annotated[TaskAddress, StringConstraints(pattern=NO_NUL)]
"""A task or child call's address, as the server stores it."""

_TRACE_KEY = r"^[a-z0-9_.-]+$"
_TRACE_VALUE = r"^[\x20-\x7e]*$"
_TRACE_ENTRIES = 8
_TRACE_KEY_CHARS = 64
_TRACE_VALUE_CHARS = 1024
TraceContext = Annotated[
    dict[
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=_TRACE_KEY_CHARS, pattern=_TRACE_KEY),
        ],
        Annotated[str, StringConstraints(max_length=_TRACE_VALUE_CHARS, pattern=_TRACE_VALUE)],
    ],
    Field(max_length=_TRACE_ENTRIES),
    # the keys' pattern as `propertyNames`: pydantic's `patternProperties` would let
    # any value through under a key that does not match
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": _TRACE_ENTRIES,
            "propertyNames": {
                "minLength": 1,
                "maxLength": _TRACE_KEY_CHARS,
                "pattern": _TRACE_KEY,
            },
            "additionalProperties": {
                "type": "string",
                "maxLength": _TRACE_VALUE_CHARS,
                "pattern": _TRACE_VALUE,
            },
            "description": "The trace context of the code that started the run, as a carrier"
            " of header-like entries (W3C `traceparent` and `tracestate`); the run's worker"
            " continues the trace from it.",
        }
    ),
]
"""A run's trace context: a few lowercase names to visible-ASCII values."""

_TRACE_FIRST = ("traceparent", "tracestate")


def fit_trace_context(carrier: Mapping[str, str]) -> dict[str, str] | None:
    """The entries of a propagator's `carrier` that a `TraceContext` holds; `None` if none.

    A trace must never fail a start: an entry the wire would refuse (a large
    `baggage`, a name with capitals) is left out rather than sent, and of more than
    eight entries `traceparent` and `tracestate` are kept first.
    """
    fitting = {
        key: value
        for key, value in carrier.items()
        if 0 < len(key) <= _TRACE_KEY_CHARS
        and re.fullmatch(_TRACE_KEY[1:-1], key)
        and len(value) <= _TRACE_VALUE_CHARS
        and re.fullmatch(_TRACE_VALUE[1:-1], value)
    }
    ordered = [key for key in _TRACE_FIRST if key in fitting]
    ordered += [key for key in fitting if key not in _TRACE_FIRST]
    return {key: fitting[key] for key in ordered[:_TRACE_ENTRIES]} or None


# -- errors -----------------------------------------------------------------------------


class ErrorBody(ResponseModel):
    """The inner object of a wire error."""

    code: ErrorCode | str = Field(description="Stable machine-readable code.")
    message: str
    details: dict[str, JsonValue] = Field(default_factory=dict)


class ErrorResponse(ResponseModel):
    """Every 4xx and 5xx body: `{"error": {"code", "message", "details"}}`."""

    error: ErrorBody


# -- starting and reading runs ----------------------------------------------------------


class StartRunRequest(RequestModel):
    """Start a run of `workflow` at `version` (idempotent by `reference_id`, and by `run_id`)."""

    workflow: Name
    version: VersionName
    input: JsonValue = None
    run_id: ClientId | None = Field(
        default=None,
        description="The new run's id, minted by the client (a ULID) so the input can be "
        "sealed to the run; the server mints one when it is left out. A start of an id "
        "that exists, with the same workflow, version, input and pool (and no reference "
        "id), answers that run: the same start sent twice.",
    )
    input_hash: Fingerprint | None = Field(
        default=None,
        description="The input's fingerprint, compared instead of the input when the "
        "reference id exists (a keyed HMAC when the client seals its input).",
    )
    reference_id: ReferenceId | None = None
    start_at: Timestamp | None = None
    delay: Duration | None = None
    pool: Name = DEFAULT_POOL
    timeout: Duration | None = None
    trace_context: TraceContext | None = None
    priority: Priority | None = Field(
        default=None, description="0 (default, lowest) to 9: higher priorities are claimed first."
    )
    concurrency: ConcurrencySpec | None = Field(
        default=None, description="The workflow's concurrency limit and the run's key."
    )
    rate_limit: RateLimitUse | None = Field(
        default=None,
        description="Units the start takes from a rate limit: the run is queued when they"
        " are granted (at once, or later: it is scheduled for its slot). Not with"
        " `start_at` or `delay`.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "not": {
                "anyOf": [
                    given("start_at", "delay"),
                    given("rate_limit", "start_at"),
                    given("rate_limit", "delay"),
                ]
            }
        }
    )

    @model_validator(mode="after")
    def _one_start_time(self) -> Self:
        if self.start_at is not None and self.delay is not None:
            raise ValueError("give start_at or delay, not both")
        timed = self.start_at is not None or self.delay is not None
        if self.rate_limit is not None and timed:
            raise ValueError(
                "a start with a rate limit starts when its units are due: give no start_at or delay"
            )
        return self


class StartChildRequest(RequestModel):
    """Start a child run from a claimed parent, identified like a task call.

    Idempotent by (parent, `address`, `occurrence`): a replay that starts the same
    child again gets the run it started the first time. The child runs in the
    parent's pool unless `pool` is given.
    """

    revision: Count
    address: StoredAddress
    occurrence: Count
    workflow: Name
    version: VersionName
    input: JsonValue = None
    run_id: ClientId | None = Field(
        default=None, description="The child's id, minted by the parent (a ULID)."
    )
    pool: Name | None = None
    timeout: Duration | None = None
    trace_context: TraceContext | None = Field(
        default=None, description="The trace context of the parent's execution that starts it."
    )
    priority: Priority | None = None
    concurrency: ConcurrencySpec | None = None
    parent_close_policy: ParentClosePolicy = Field(
        default=ParentClosePolicy.TERMINATE,
        description="What the server does with the child when its parent ends.",
    )


class StartRunResponse(ResponseModel):
    """The run a start created, or found by its reference id (`created` is then false)."""

    run: RunSummary
    created: bool


class ListRunsQuery(RequestModel):
    """Filters and keyset pagination of `GET /runs` (sent as query parameters)."""

    workflow: Name | None = None
    version: VersionName | None = None
    status: list[RunStatus] | None = None
    reference_id: ReferenceId | None = None
    concurrency_key: ConcurrencyKey | None = None
    created_after: Timestamp | None = None
    created_before: Timestamp | None = None
    unserved: bool = Field(
        default=False,
        description="Only runs not yet ended whose (workflow, version, pool) no live worker"
        " or endpoint serves.",
    )
    limit: int = Field(default=50, ge=1, le=500)
    cursor: Cursor | None = None


class RunPage(ResponseModel):
    """One page of runs, newest first; pass `next_cursor` back for the next."""

    runs: list[RunSummary]
    next_cursor: str | None = None


class CancelRunRequest(RequestModel):
    """Cancel a run and, through it, its children."""

    reason: str | None = Field(default=None, max_length=1000, pattern=NO_NUL)


class SendEventRequest(RequestModel):
    """Deliver an event to a run; a repeated `reference_id` is dropped as a duplicate."""

    name: Name
    data: JsonValue = None
    reference_id: ReferenceId | None = None


class SendEventResponse(ResponseModel):
    """The stored event's id; `duplicate` when its reference id was seen before."""

    event_id: EventId
    duplicate: bool


# -- claims and heartbeats ---------------------------------------------------------------


class WorkflowCapability(RequestModel):
    """One (workflow, version, pool) triple a worker can execute."""

    workflow: Name
    version: VersionName
    pool: Name = DEFAULT_POOL


class ClaimRequest(RequestModel):
    """Ask for up to `max_runs` runs; the server holds the request up to `wait` for work."""

    worker_id: WorkerName
    capabilities: list[WorkflowCapability] = Field(min_length=1, max_length=1000)
    max_runs: Integer = Field(default=1, ge=1, le=MAX_CLAIMED_PER_POLL)
    wait: Annotated[Duration, DurationRange(at_most=MAX_LONG_POLL)] = duration_field(
        timedelta(seconds=30)
    )


class ClaimedRun(ResponseModel):
    """A claimed run with everything its replay needs, in one response."""

    run: RunSummary
    input: JsonValue = None
    tasks: list[TaskRecord] = Field(default_factory=list)
    sleeps: list[SleepRecord] = Field(default_factory=list)
    event_waits: list[EventWaitRecord] = Field(default_factory=list)
    events: list[EventRecord] = Field(default_factory=list)
    children: list[ChildRecord] = Field(default_factory=list)
    trace_context: dict[str, str] | None = Field(
        default=None, description="The trace context the run was started with, if any."
    )
    cleanup: ErrorInfo | None = Field(
        default=None,
        description=(
            "Set when the run is claimed for its cleanup (`cleaning_up`): the cancellation or"
            " timeout its code sees where the run was, before it ends."
        ),
    )


class ClaimResponse(ResponseModel):
    """The runs handed to this worker (empty when the wait ran out)."""

    runs: list[ClaimedRun]


class ServerLimits(ResponseModel):
    """Limits of the server a client checks before it sends (`GET /api/v1/limits`)."""

    max_body_bytes: Count
    """Request bodies larger than this are refused with 413."""


class WorkerSummary(ResponseModel):
    """A worker the server has heard from (`GET /api/v1/workers`)."""

    id: WorkerId
    capabilities: list[WorkflowCapability]
    """The (workflow, version, pool) triples it declared on its last claim."""
    running: Count
    """Runs it holds now (running, or claimed for their cleanup)."""
    last_seen_at: Timestamp
    """Its last claim or heartbeat."""
    live: bool
    """Seen within the claim idle timeout: runs of its triples do not wait for a worker."""


class WorkerPage(ResponseModel):
    """The workers of the caller's namespace, the most recently seen first."""

    workers: list[WorkerSummary]


class RunLease(RequestModel):
    """A run a worker holds, at the revision its claim returned."""

    run_id: Annotated[RunId, ID]
    revision: Count


class HeartbeatRequest(RequestModel):
    """Refresh the claims on the runs a worker holds."""

    worker_id: WorkerName
    runs: list[RunLease] = Field(max_length=MAX_HELD_RUNS)


class RunDirective(StrEnum):
    """What a worker must do with a run it holds."""

    CONTINUE = "continue"
    CANCEL = "cancel"
    PAUSE = "pause"
    """Let the task in flight finish and be recorded, then release the run before its
    next task starts (or when it would suspend); the claim stays valid until then."""
    LOST = "lost"
    """The claim was superseded; stop without writing anything more."""


class RunLeaseStatus(ResponseModel):
    """The server's answer for one held run."""

    run_id: RunId
    directive: RunDirective


class HeartbeatResponse(ResponseModel):
    """One directive per run in the heartbeat."""

    runs: list[RunLeaseStatus]


class WatchedRun(RunLease):
    """A held run a worker watches, with the directive it follows now."""

    pausing: StrictBool = False
    """Whether the worker already stops it at its next task boundary (a pause it was told of)."""


MAX_DRY_RUNS_IN_HAND = 1000
"""The most dry-run jobs a directives poll may say it replays now."""

MAX_DRY_RUNS_PER_POLL = 10
"""The most dry-run jobs one directives answer hands out."""


class DirectivesRequest(RequestModel):
    """Long-poll for directives on the runs a worker holds (`POST /api/v1/directives`).

    The server answers as soon as one of them calls for another directive than the
    one the worker follows (cancelled, claim lost, pause requested or withdrawn), or
    when `wait` ran out.
    """

    worker_id: WorkerName
    runs: list[WatchedRun] = Field(max_length=MAX_HELD_RUNS)
    wait: Annotated[Duration, DurationRange(at_most=MAX_LONG_POLL)] = duration_field(
        timedelta(seconds=30)
    )
    dry_runs: list[Annotated[str, ID]] = Field(
        default_factory=list,
        max_length=MAX_DRY_RUNS_IN_HAND,
        description="The dry-run jobs the worker replays now (not handed to it again).",
    )
    max_dry_runs: Integer = Field(
        default=0,
        ge=0,
        le=MAX_DRY_RUNS_PER_POLL,
        description="The most new dry-run jobs to hand out: the room the worker has for"
        " replays (0: none; a worker that does not say replays none).",
    )


class DryRunJob(ResponseModel):
    """A run to replay without side effects on `run.run.version`, and report (a dry run).

    `run` is what a claim of the run would carry, with the version to replay; the worker
    answers `POST /api/v1/dry-runs/{job_id}/report`.
    """

    job_id: Annotated[str, ID]
    run: ClaimedRun


class DirectivesResponse(ResponseModel):
    """The directives that changed (empty when the wait ran out), and dry runs to replay.

    The poll stays open while the worker holds no run, so an idle worker hears of a
    dry-run job within moments.
    """

    runs: list[RunLeaseStatus]
    dry_runs: list[DryRunJob] = Field(default_factory=list)


# -- recording tasks ---------------------------------------------------------------------

MAX_NOTICE_LENGTH = 2000
"""The longest notice a task record may carry."""

NoticeText = Annotated[str, StringConstraints(max_length=MAX_NOTICE_LENGTH, pattern=NO_NUL)]
"""A notice of a replay, as a task record carries it."""


class AbandonedTaskRequest(RequestModel):
    """A task attempt whose thread ignored its cancellation and still runs.

    `POST /api/v1/runs/{run_id}/abandoned-tasks` notes it in the run's history. Sent
    by the worker that held the run at `revision`, which may be fenced since.
    """

    worker_id: WorkerName | None = None
    revision: Count
    task_name: Name
    attempt: Integer = Field(ge=1)
    grace: Duration
    """How long the attempt has run on since it was cancelled."""


class RecordTaskRequest(RequestModel):
    """Record one attempt of a task call, identified by address and occurrence.

    `running` opens an attempt (with the call's `input` on its first attempt);
    `completed` records its `result`; `failed` and `awaiting_retry` record its
    `error`, the latter with when the next attempt is due: `retry_delay` from now, as
    the server's clock reads it (what a worker sends, so a worker's clock never moves
    a due time), or the absolute `retry_at`.
    """

    revision: Count
    name: Name
    address: StoredAddress
    occurrence: Count
    attempt: Ordinal
    status: TaskStatus
    input: JsonValue = None
    result: JsonValue = None
    error: ErrorInfo | None = None
    retry_at: Timestamp | None = None
    retry_delay: Duration | None = None
    retry: RetryPolicy | None = None
    worker_id: WorkerId | None = None
    started_at: Timestamp | None = Field(
        default=None, description="When the attempt began (default: when it is recorded)."
    )
    notice: NoticeText | None = Field(
        default=None,
        description="What the replay noticed when it made this call (a divergence from"
        " the run's history); shown in the run's detail.",
    )

    # the rules of `_fields_match_status`, stated for the OpenAPI document
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"status": {"enum": ["failed", "awaiting_retry"]}}},
                    "then": given("error"),
                    "else": {"properties": {"error": {"type": "null"}}},
                },
                {
                    "if": {"properties": {"status": {"const": "awaiting_retry"}}},
                    "then": {
                        "oneOf": [given("retry_at"), given("retry_delay")],
                    },
                    "else": {
                        "properties": {
                            "retry_at": {"type": "null"},
                            "retry_delay": {"type": "null"},
                        }
                    },
                },
                {
                    "if": {"properties": {"status": {"const": "completed"}}},
                    "then": {},
                    "else": {"properties": {"result": {"type": "null"}}},
                },
            ]
        }
    )

    @model_validator(mode="after")
    def _fields_match_status(self) -> Self:
        failing = self.status in (TaskStatus.FAILED, TaskStatus.AWAITING_RETRY)
        if failing and self.error is None:
            raise ValueError(f"a {self.status} record needs an error")
        if not failing and self.error is not None:
            raise ValueError(f"a {self.status} record carries no error")
        due = (self.retry_at is not None) + (self.retry_delay is not None)
        if self.status is TaskStatus.AWAITING_RETRY and due != 1:
            raise ValueError("awaiting_retry needs one of retry_at and retry_delay")
        if self.status is not TaskStatus.AWAITING_RETRY and due:
            raise ValueError("retry_at and retry_delay go with awaiting_retry only")
        if self.status is not TaskStatus.COMPLETED and self.result is not None:
            raise ValueError("only a completed record carries a result")
        return self


class RecordTaskResponse(ResponseModel):
    """The recorded task call and its status after the write."""

    task_id: TaskId
    status: TaskStatus
    directive: RunDirective = Field(
        default=RunDirective.CONTINUE,
        description="`pause` once the run was paused: stop at the next task boundary.",
    )

    @property
    def is_terminal(self) -> bool:
        """Whether the task call has ended."""
        return self.status in TASK_TERMINAL_STATUSES


# -- transitions of a claimed run --------------------------------------------------------


def _kind_and(rule: dict[str, Any]) -> Any:
    """`requiring("kind")` of a wait, plus a JSON Schema `rule` across its fields."""
    require_kind = requiring("kind")

    def extra(schema: dict[str, Any]) -> None:
        require_kind(schema)
        schema.update(rule)

    return extra


class AwaitSleep(RequestModel):
    """Sleep: the `occurrence`-th sleep called `name`, for `duration` or until `wake_at`.

    The server registers a sleep the first time it is reported: `duration` is counted
    from then, on the server's clock (what a worker sends, so that its own clock never
    moves a due time); `wake_at` is a due time as the server's clock reads it. A sleep
    already registered keeps its due time, whatever a later report says.
    """

    kind: Literal["sleep"] = "sleep"

    model_config = ConfigDict(
        json_schema_extra=_kind_and({"oneOf": [given("wake_at"), given("duration")]})
    )
    name: Name
    occurrence: Count
    wake_at: Timestamp | None = None
    duration: Duration | None = None

    @model_validator(mode="after")
    def _one_due_time(self) -> Self:
        if (self.wake_at is None) == (self.duration is None):
            raise ValueError("give wake_at or duration, exactly one")
        return self


class AwaitEvent(RequestModel):
    """Wait for the `occurrence`-th event called `name`, with a timeout if given.

    `timeout` is counted from when the server first registers the wait (on its clock);
    `timeout_at` is a due time on the server's clock. A wait already registered keeps
    its timeout.
    """

    kind: Literal["event"] = "event"

    model_config = ConfigDict(json_schema_extra=_kind_and({"not": given("timeout_at", "timeout")}))
    name: Name
    occurrence: Count
    timeout_at: Timestamp | None = None
    timeout: Duration | None = None

    @model_validator(mode="after")
    def _one_timeout(self) -> Self:
        if self.timeout_at is not None and self.timeout is not None:
            raise ValueError("give timeout_at or timeout, not both")
        return self


class AwaitChild(RequestModel):
    """Wait until the child run ends, whatever its terminal status."""

    kind: Literal["child"] = "child"

    model_config = ConfigDict(json_schema_extra=requiring("kind"))
    child_run_id: Annotated[RunId, ID]


WaitReason = Annotated[str, StringConstraints(max_length=MAX_NOTICE_LENGTH, pattern=NO_NUL)]
"""What a wait says of itself in the run's detail."""


class AwaitRetry(RequestModel):
    """Wait out a long retry back-off: a task call's, or until `retry_at`.

    With `address` and `occurrence`, the wait ends when that task call's next attempt
    is due, as recorded with its last failed attempt (`RecordTaskRequest.retry_delay`).
    """

    kind: Literal["retry"] = "retry"

    model_config = ConfigDict(
        json_schema_extra=_kind_and(
            {
                "allOf": [
                    {"oneOf": [given("retry_at"), given("address", "occurrence")]},
                    {"if": given("address"), "then": given("occurrence")},
                    {"if": given("occurrence"), "then": given("address")},
                ]
            }
        )
    )
    retry_at: Timestamp | None = None
    address: StoredAddress | None = None
    occurrence: Count | None = None
    reason: WaitReason | None = Field(
        default=None,
        description="What the run waits for, as its detail shows it (a rate limit's next unit,"
        " say).",
    )

    @model_validator(mode="after")
    def _one_due_time(self) -> Self:
        call = (self.address is not None) + (self.occurrence is not None)
        if call == 1:
            raise ValueError("give a task call's address and occurrence together")
        if (self.retry_at is None) == (call == 0):
            raise ValueError("give retry_at or a task call (address, occurrence), exactly one")
        return self


class AwaitTask(RequestModel):
    """Wait for the answer of a remote task attempt the server pushes without the worker.

    The server answered the attempt's `RemoteTaskRequest` with `pending`: it records
    the attempt's outcome when the task endpoint answers, and that re-queues the run.
    """

    kind: Literal["task"] = "task"

    model_config = ConfigDict(json_schema_extra=requiring("kind"))
    address: StoredAddress
    occurrence: Count


RunWait = Annotated[
    AwaitSleep | AwaitEvent | AwaitChild | AwaitRetry | AwaitTask, Field(discriminator="kind")
]
"""One thing a suspended run waits for."""


class CompleteRun(RequestModel):
    """End the run with its result."""

    kind: Literal["complete"] = "complete"

    model_config = ConfigDict(json_schema_extra=requiring("kind"))
    result: JsonValue = None


class FailRun(RequestModel):
    """End the run (or, under a workflow retry policy, this attempt of it) with an error."""

    kind: Literal["fail"] = "fail"

    model_config = ConfigDict(
        json_schema_extra=_kind_and({"not": given("retry_at", "retry_delay")})
    )
    error: ErrorInfo
    retry_at: Timestamp | None = Field(
        default=None, description="When set, the run awaits a workflow-level retry instead."
    )
    retry_delay: Duration | None = Field(
        default=None,
        description="Like `retry_at`, as a delay from now on the server's clock (a worker's "
        "clock may be off).",
    )

    @model_validator(mode="after")
    def _one_due_time(self) -> Self:
        if self.retry_at is not None and self.retry_delay is not None:
            raise ValueError("give retry_at or retry_delay, not both")
        return self

    @property
    def retries(self) -> bool:
        """Whether the run awaits a workflow-level retry (rather than ending)."""
        return self.retry_at is not None or self.retry_delay is not None


class SuspendRun(RequestModel):
    """Release the run until one of `waits` is satisfied (several when awaited together)."""

    kind: Literal["suspend"] = "suspend"

    model_config = ConfigDict(json_schema_extra=requiring("kind"))
    waits: list[RunWait] = Field(min_length=1, max_length=1000)


class ReleaseRun(RequestModel):
    """Give the run back to the queue unchanged (the worker is shutting down)."""

    kind: Literal["release"] = "release"

    model_config = ConfigDict(json_schema_extra=requiring("kind"))


class ContinueRun(RequestModel):
    """End the run and start a fresh run of the same version with `input` (continue as new).

    The new run (`run_id`, minted by the worker, which sealed `input` to it) starts
    queued with an empty history; the ended run links to it (`continued_as`), it back
    (`continued_from`).
    """

    kind: Literal["continue"] = "continue"

    model_config = ConfigDict(json_schema_extra=requiring("kind"))
    run_id: ClientId
    input: JsonValue = None


RunAction = Annotated[
    CompleteRun | FailRun | SuspendRun | ReleaseRun | ContinueRun, Field(discriminator="kind")
]
"""What a worker does with the run it holds."""


MAX_TASKS_PER_TRANSITION = 1000
"""Task records one transition may carry."""


class TransitionRunRequest(RequestModel):
    """Apply `action` to a claimed run, fenced by the claim's `revision`.

    `tasks` are task records written first, in the same transaction: a worker sends
    the results its run produced since its last write with the transition itself, so
    a run's last task costs no request of its own. Each is fenced by its own
    `revision` like the transition: one that differs from the run's is stale.
    """

    revision: Count
    action: RunAction
    tasks: list[RecordTaskRequest] = Field(
        default_factory=list, max_length=MAX_TASKS_PER_TRANSITION
    )


class TransitionRunResponse(ResponseModel):
    """The run after the transition."""

    run: RunSummary


# -- webhooks -----------------------------------------------------------------------------


MAX_WEBHOOK_LIFETIME = timedelta(days=90)
"""The longest a webhook URL may stay valid."""

MAX_WEBHOOK_SCHEMA_BYTES = 64 * 1024
"""The largest event schema a webhook may carry, as canonical JSON."""


class CreateWebhookRequest(RequestModel):
    """Mint a signed URL that delivers the event `event` to a claimed run.

    Fenced by `revision` like every worker write. `schema` (the attribute
    `data_schema`) is the JSON Schema (Draft 2020-12) every delivered body must match,
    as pydantic's `TypeAdapter(T).json_schema()` writes it for the event's data type.
    """

    # `schema` would shadow a (deprecated) BaseModel method: the field is aliased
    model_config = ConfigDict(serialize_by_alias=True)

    revision: Count
    event: Name
    expires_in: Annotated[
        Duration, DurationRange(at_least=timedelta(milliseconds=1), at_most=MAX_WEBHOOK_LIFETIME)
    ] = Field(description="How long the URL stays valid (at most 90 days).")
    data_schema: dict[str, JsonValue] = Field(
        alias="schema",
        description="The JSON Schema (Draft 2020-12) of the event's data; an object that is"
        " no valid JSON Schema is refused with 422.",
    )

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        size = len(canonical_json(self.data_schema))
        if size > MAX_WEBHOOK_SCHEMA_BYTES:
            raise ValueError(
                f"schema is {size} bytes of JSON; at most {MAX_WEBHOOK_SCHEMA_BYTES} are allowed"
            )
        return self


class CreateWebhookResponse(ResponseModel):
    """A minted webhook: POST the event's data as JSON to `url` (or to `path` on the server).

    `path` is relative to the server's root:
    `/api/v1/webhooks/{webhook_id}?expires=<epoch ms>&signature=<base64url HMAC-SHA256>`;
    `url` is the same on the server's public base URL.
    """

    webhook_id: WebhookId
    path: str
    url: str
    expires_at: AwareDatetime
