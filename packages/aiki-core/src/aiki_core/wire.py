"""What the server and the SDK exchange over the HTTP API.

The requests and responses of every route (runs, claims, task records, transitions,
events, webhooks, schedules, rate limits), the records a run's detail shows, the limits the
protocol sets, the field types and ids of the models, the run and task state
machine, the wire form of errors (`ErrorCode`, `ErrorResponse`, `error_from_wire`),
durations as whole milliseconds, and the canonical JSON and content hashes both
sides compute alike (a task's address, a reference id's payload fingerprint).

Application code rarely needs these names: the client, the worker and the server
speak them for it. They are public so that those packages, other clients of the API
and tests can use them without reaching into private modules.
"""

from __future__ import annotations

from aiki_core._api import (
    MAX_LONG_POLL,
    MAX_NOTICE_LENGTH,
    MAX_TASKS_PER_TRANSITION,
    MAX_WEBHOOK_LIFETIME,
    MAX_WEBHOOK_SCHEMA_BYTES,
    AwaitChild,
    AwaitEvent,
    AwaitRetry,
    AwaitSleep,
    AwaitTask,
    CancelRunRequest,
    ClaimedRun,
    ClaimRequest,
    ClaimResponse,
    CompleteRun,
    ContinueRun,
    CreateWebhookRequest,
    CreateWebhookResponse,
    ErrorBody,
    ErrorResponse,
    FailRun,
    HeartbeatRequest,
    HeartbeatResponse,
    ListRunsQuery,
    RecordTaskRequest,
    RecordTaskResponse,
    ReleaseRun,
    RunAction,
    RunDirective,
    RunLease,
    RunLeaseStatus,
    RunPage,
    RunWait,
    SendEventRequest,
    SendEventResponse,
    ServerLimits,
    StartChildRequest,
    StartRunRequest,
    StartRunResponse,
    SuspendRun,
    TransitionRunRequest,
    TransitionRunResponse,
    WorkerPage,
    WorkerSummary,
    WorkflowCapability,
)
from aiki_core._canonical import canonical_json, content_hash, task_address
from aiki_core._concurrency import (
    MAX_CONCURRENCY_KEY_LENGTH,
    MAX_PRIORITY,
    ConcurrencyKey,
    ConcurrencyLimit,
    ConcurrencyLimitPage,
    ConcurrencySpec,
    Priority,
    SetConcurrencyLimitRequest,
)
from aiki_core._duration import MAX_DURATION, Duration, from_millis, to_millis
from aiki_core._endpoints import (
    CreateEndpointRequest,
    CreateEndpointResponse,
    EndpointInfo,
    EndpointKind,
    EndpointPage,
    EndpointSecretInfo,
    EndpointStatus,
    RotateEndpointSecretRequest,
    RotateEndpointSecretResponse,
)
from aiki_core._exceptions import ErrorCode, error_from_wire
from aiki_core._ids import (
    DEFAULT_NAMESPACE,
    DEFAULT_POOL,
    EventId,
    Namespace,
    PoolName,
    ScheduleId,
    TaskAddress,
    TaskId,
    WebhookId,
    WorkerId,
)
from aiki_core._public import show_public_path as _show_public_path
from aiki_core._push import (
    PushedRun,
    PushedRunAnswer,
    PushedTask,
    PushedTaskAnswer,
    RemoteTaskRequest,
)
from aiki_core._rate_limits import (
    MAX_RATE_LIMIT_KEY_LENGTH,
    AcquireRateLimitRequest,
    AcquireRateLimitResponse,
    RateLimitInfo,
    RateLimitPage,
    RateLimitUse,
    SetRateLimitRequest,
)
from aiki_core._records import (
    ChildRecord,
    EventOrigin,
    EventRecord,
    EventWaitRecord,
    PendingWait,
    RunDetail,
    RunNotice,
    RunOutcome,
    RunSummary,
    SleepRecord,
    StateTransition,
    TaskAttemptRecord,
    TaskRecord,
)
from aiki_core._retention import RetentionInfo, SetRetentionRequest
from aiki_core._schedules import CreateScheduleRequest, Schedule, SchedulePage
from aiki_core._status import (
    RUN_INITIAL_STATUSES,
    RUN_TERMINAL_STATUSES,
    RUN_TRANSITIONS,
    RUN_WAITING_STATUSES,
    TASK_INITIAL_STATUSES,
    TASK_RERUN_STATUSES,
    TASK_TERMINAL_STATUSES,
    TASK_TRANSITIONS,
)
from aiki_core._wire import ID_PATTERN, MAX_COUNT, Cursor, Identifier, Name

__all__ = (
    # starting, listing and steering runs
    "CancelRunRequest",
    "ListRunsQuery",
    "RunPage",
    "SendEventRequest",
    "SendEventResponse",
    "StartChildRequest",
    "StartRunRequest",
    "StartRunResponse",
    # what a run's summary and detail show
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
    # a worker's claims, heartbeats, task records and transitions
    "AwaitChild",
    "AwaitEvent",
    "AwaitRetry",
    "AwaitSleep",
    "AwaitTask",
    "ClaimRequest",
    "ClaimResponse",
    "ClaimedRun",
    "CompleteRun",
    "ContinueRun",
    "FailRun",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "RecordTaskRequest",
    "RecordTaskResponse",
    "ReleaseRun",
    "RunAction",
    "RunDirective",
    "RunLease",
    "RunLeaseStatus",
    "RunWait",
    "SuspendRun",
    "TransitionRunRequest",
    "TransitionRunResponse",
    "WorkflowCapability",
    # webhooks and schedules
    "CreateScheduleRequest",
    "CreateWebhookRequest",
    "CreateWebhookResponse",
    "Schedule",
    "SchedulePage",
    # flow control: concurrency limits and priorities
    "ConcurrencyLimit",
    "ConcurrencyLimitPage",
    "ConcurrencySpec",
    "SetConcurrencyLimitRequest",
    # rate limits
    "AcquireRateLimitRequest",
    "AcquireRateLimitResponse",
    "RateLimitInfo",
    "RateLimitPage",
    "RateLimitUse",
    "SetRateLimitRequest",
    # retention
    "RetentionInfo",
    "SetRetentionRequest",
    # push delivery to endpoints
    "CreateEndpointRequest",
    "CreateEndpointResponse",
    "EndpointInfo",
    "EndpointKind",
    "EndpointPage",
    "EndpointSecretInfo",
    "EndpointStatus",
    "RotateEndpointSecretRequest",
    "RotateEndpointSecretResponse",
    "PushedRun",
    "PushedRunAnswer",
    "PushedTask",
    "PushedTaskAnswer",
    "RemoteTaskRequest",
    # the workers a namespace has
    "WorkerPage",
    "WorkerSummary",
    # limits
    "MAX_CONCURRENCY_KEY_LENGTH",
    "MAX_COUNT",
    "MAX_DURATION",
    "MAX_LONG_POLL",
    "MAX_NOTICE_LENGTH",
    "MAX_PRIORITY",
    "MAX_RATE_LIMIT_KEY_LENGTH",
    "MAX_TASKS_PER_TRANSITION",
    "MAX_WEBHOOK_LIFETIME",
    "MAX_WEBHOOK_SCHEMA_BYTES",
    "ServerLimits",
    # field types and ids
    "ConcurrencyKey",
    "Cursor",
    "DEFAULT_NAMESPACE",
    "DEFAULT_POOL",
    "Duration",
    "EventId",
    "ID_PATTERN",
    "Identifier",
    "Name",
    "Namespace",
    "PoolName",
    "Priority",
    "ScheduleId",
    "TaskAddress",
    "TaskId",
    "WebhookId",
    "WorkerId",
    "from_millis",
    "to_millis",
    # the state machine
    "RUN_INITIAL_STATUSES",
    "RUN_TERMINAL_STATUSES",
    "RUN_TRANSITIONS",
    "RUN_WAITING_STATUSES",
    "TASK_INITIAL_STATUSES",
    "TASK_RERUN_STATUSES",
    "TASK_TERMINAL_STATUSES",
    "TASK_TRANSITIONS",
    # errors on the wire
    "ErrorBody",
    "ErrorCode",
    "ErrorResponse",
    "error_from_wire",
    # canonical JSON and content hashes
    "canonical_json",
    "content_hash",
    "task_address",
)

# reprs and docs show aiki_core.wire.ClaimedRun, not aiki_core._api.ClaimedRun
_show_public_path(__name__, __all__, globals())
