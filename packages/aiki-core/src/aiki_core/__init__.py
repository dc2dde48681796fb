"""The protocol every Aiki package shares.

Wire models of the HTTP API, run and task statuses with their state machine,
branded ids, durations, retry policies, canonical JSON hashing for content-addressed
replay, the error tree and its serializable form, the `Logger` and codec protocols,
and the protocols through which the other packages meet.
"""

from __future__ import annotations

from aiki_core.__about__ import __version__ as __version__
from aiki_core._api import (
    MAX_NOTICE_LENGTH as MAX_NOTICE_LENGTH,
)
from aiki_core._api import (
    MAX_TASKS_PER_TRANSITION as MAX_TASKS_PER_TRANSITION,
)
from aiki_core._api import (
    MAX_WEBHOOK_LIFETIME as MAX_WEBHOOK_LIFETIME,
)
from aiki_core._api import (
    MAX_WEBHOOK_SCHEMA_BYTES as MAX_WEBHOOK_SCHEMA_BYTES,
)
from aiki_core._api import (
    AwaitChild as AwaitChild,
)
from aiki_core._api import (
    AwaitEvent as AwaitEvent,
)
from aiki_core._api import (
    AwaitRetry as AwaitRetry,
)
from aiki_core._api import (
    AwaitSleep as AwaitSleep,
)
from aiki_core._api import (
    CancelRunRequest as CancelRunRequest,
)
from aiki_core._api import (
    ClaimedRun as ClaimedRun,
)
from aiki_core._api import (
    ClaimRequest as ClaimRequest,
)
from aiki_core._api import (
    ClaimResponse as ClaimResponse,
)
from aiki_core._api import (
    CompleteRun as CompleteRun,
)
from aiki_core._api import (
    ContinueRun as ContinueRun,
)
from aiki_core._api import (
    CreateWebhookRequest as CreateWebhookRequest,
)
from aiki_core._api import (
    CreateWebhookResponse as CreateWebhookResponse,
)
from aiki_core._api import (
    ErrorBody as ErrorBody,
)
from aiki_core._api import (
    ErrorResponse as ErrorResponse,
)
from aiki_core._api import (
    FailRun as FailRun,
)
from aiki_core._api import (
    HeartbeatRequest as HeartbeatRequest,
)
from aiki_core._api import (
    HeartbeatResponse as HeartbeatResponse,
)
from aiki_core._api import (
    ListRunsQuery as ListRunsQuery,
)
from aiki_core._api import (
    RecordTaskRequest as RecordTaskRequest,
)
from aiki_core._api import (
    RecordTaskResponse as RecordTaskResponse,
)
from aiki_core._api import (
    ReleaseRun as ReleaseRun,
)
from aiki_core._api import (
    RunAction as RunAction,
)
from aiki_core._api import (
    RunDirective as RunDirective,
)
from aiki_core._api import (
    RunLease as RunLease,
)
from aiki_core._api import (
    RunLeaseStatus as RunLeaseStatus,
)
from aiki_core._api import (
    RunPage as RunPage,
)
from aiki_core._api import (
    RunWait as RunWait,
)
from aiki_core._api import (
    SendEventRequest as SendEventRequest,
)
from aiki_core._api import (
    SendEventResponse as SendEventResponse,
)
from aiki_core._api import (
    ServerLimits as ServerLimits,
)
from aiki_core._api import (
    StartChildRequest as StartChildRequest,
)
from aiki_core._api import (
    StartRunRequest as StartRunRequest,
)
from aiki_core._api import (
    StartRunResponse as StartRunResponse,
)
from aiki_core._api import (
    SuspendRun as SuspendRun,
)
from aiki_core._api import (
    TransitionRunRequest as TransitionRunRequest,
)
from aiki_core._api import (
    TransitionRunResponse as TransitionRunResponse,
)
from aiki_core._api import (
    WorkflowCapability as WorkflowCapability,
)
from aiki_core._canonical import (
    canonical_json as canonical_json,
)
from aiki_core._canonical import (
    content_hash as content_hash,
)
from aiki_core._canonical import (
    task_address as task_address,
)
from aiki_core._codec import (
    CodecContext as CodecContext,
)
from aiki_core._codec import (
    IdentityCodec as IdentityCodec,
)
from aiki_core._codec import (
    PayloadCodec as PayloadCodec,
)
from aiki_core._duration import (
    MAX_DURATION as MAX_DURATION,
)
from aiki_core._duration import (
    Duration as Duration,
)
from aiki_core._duration import (
    from_millis as from_millis,
)
from aiki_core._duration import (
    to_millis as to_millis,
)
from aiki_core._error_info import (
    ErrorInfo as ErrorInfo,
)
from aiki_core._exceptions import (
    AikiError as AikiError,
)
from aiki_core._exceptions import (
    AikiTimeoutError as AikiTimeoutError,
)
from aiki_core._exceptions import (
    AuthenticationError as AuthenticationError,
)
from aiki_core._exceptions import (
    CodecError as CodecError,
)
from aiki_core._exceptions import (
    ConflictError as ConflictError,
)
from aiki_core._exceptions import (
    DecryptionError as DecryptionError,
)
from aiki_core._exceptions import (
    ErrorCode as ErrorCode,
)
from aiki_core._exceptions import (
    IllegalTransitionError as IllegalTransitionError,
)
from aiki_core._exceptions import (
    InvalidRequestError as InvalidRequestError,
)
from aiki_core._exceptions import (
    NonRetryableError as NonRetryableError,
)
from aiki_core._exceptions import (
    NotFoundError as NotFoundError,
)
from aiki_core._exceptions import (
    PayloadTooLargeError as PayloadTooLargeError,
)
from aiki_core._exceptions import (
    PayloadValidationError as PayloadValidationError,
)
from aiki_core._exceptions import (
    PermissionDeniedError as PermissionDeniedError,
)
from aiki_core._exceptions import (
    ReferenceIdConflictError as ReferenceIdConflictError,
)
from aiki_core._exceptions import (
    RemoteError as RemoteError,
)
from aiki_core._exceptions import (
    ReplayDivergenceError as ReplayDivergenceError,
)
from aiki_core._exceptions import (
    RunInterrupt as RunInterrupt,
)
from aiki_core._exceptions import (
    RunLimitError as RunLimitError,
)
from aiki_core._exceptions import (
    ServerError as ServerError,
)
from aiki_core._exceptions import (
    ServerUnavailableError as ServerUnavailableError,
)
from aiki_core._exceptions import (
    StaleRevisionError as StaleRevisionError,
)
from aiki_core._exceptions import (
    StorageUnavailableError as StorageUnavailableError,
)
from aiki_core._exceptions import (
    TaskFailedError as TaskFailedError,
)
from aiki_core._exceptions import (
    TaskTimeoutError as TaskTimeoutError,
)
from aiki_core._exceptions import (
    WorkflowCancelledError as WorkflowCancelledError,
)
from aiki_core._exceptions import (
    WorkflowFailedError as WorkflowFailedError,
)
from aiki_core._exceptions import (
    WorkflowTimeoutError as WorkflowTimeoutError,
)
from aiki_core._exceptions import (
    error_from_wire as error_from_wire,
)
from aiki_core._ids import (
    DEFAULT_NAMESPACE as DEFAULT_NAMESPACE,
)
from aiki_core._ids import (
    DEFAULT_POOL as DEFAULT_POOL,
)
from aiki_core._ids import (
    EventId as EventId,
)
from aiki_core._ids import (
    Namespace as Namespace,
)
from aiki_core._ids import (
    PoolName as PoolName,
)
from aiki_core._ids import (
    RunId as RunId,
)
from aiki_core._ids import (
    ScheduleId as ScheduleId,
)
from aiki_core._ids import (
    TaskAddress as TaskAddress,
)
from aiki_core._ids import (
    TaskId as TaskId,
)
from aiki_core._ids import (
    WebhookId as WebhookId,
)
from aiki_core._ids import (
    WorkerId as WorkerId,
)
from aiki_core._ids import (
    new_run_id as new_run_id,
)
from aiki_core._ids import (
    new_schedule_id as new_schedule_id,
)
from aiki_core._logging import (
    ConsoleLogger as ConsoleLogger,
)
from aiki_core._logging import (
    Logger as Logger,
)
from aiki_core._logging import (
    LogLevel as LogLevel,
)
from aiki_core._logging import (
    StdlibLogger as StdlibLogger,
)
from aiki_core._outcomes import (
    raise_for_outcome as raise_for_outcome,
)
from aiki_core._protocols import (
    EventDefinition as EventDefinition,
)
from aiki_core._protocols import (
    ExecutableVersion as ExecutableVersion,
)
from aiki_core._protocols import (
    RunExecution as RunExecution,
)
from aiki_core._protocols import (
    SchedulableVersion as SchedulableVersion,
)
from aiki_core._protocols import (
    TaskAttemptInfo as TaskAttemptInfo,
)
from aiki_core._protocols import (
    TaskInvocation as TaskInvocation,
)
from aiki_core._protocols import (
    TaskRunContext as TaskRunContext,
)
from aiki_core._protocols import (
    WorkerApi as WorkerApi,
)
from aiki_core._protocols import (
    WorkflowRunHandle as WorkflowRunHandle,
)
from aiki_core._protocols import (
    WorkflowStarter as WorkflowStarter,
)
from aiki_core._records import (
    ChildRecord as ChildRecord,
)
from aiki_core._records import (
    EventOrigin as EventOrigin,
)
from aiki_core._records import (
    EventRecord as EventRecord,
)
from aiki_core._records import (
    EventWaitRecord as EventWaitRecord,
)
from aiki_core._records import (
    PendingWait as PendingWait,
)
from aiki_core._records import (
    RunDetail as RunDetail,
)
from aiki_core._records import (
    RunNotice as RunNotice,
)
from aiki_core._records import (
    RunOutcome as RunOutcome,
)
from aiki_core._records import (
    RunSummary as RunSummary,
)
from aiki_core._records import (
    SleepRecord as SleepRecord,
)
from aiki_core._records import (
    StateTransition as StateTransition,
)
from aiki_core._records import (
    TaskAttemptRecord as TaskAttemptRecord,
)
from aiki_core._records import (
    TaskRecord as TaskRecord,
)
from aiki_core._retry import (
    RetryPolicy as RetryPolicy,
)
from aiki_core._schedules import (
    CreateScheduleRequest as CreateScheduleRequest,
)
from aiki_core._schedules import (
    OverlapPolicy as OverlapPolicy,
)
from aiki_core._schedules import (
    Schedule as Schedule,
)
from aiki_core._schedules import (
    SchedulePage as SchedulePage,
)
from aiki_core._status import (
    RUN_INITIAL_STATUSES as RUN_INITIAL_STATUSES,
)
from aiki_core._status import (
    RUN_TERMINAL_STATUSES as RUN_TERMINAL_STATUSES,
)
from aiki_core._status import (
    RUN_TRANSITIONS as RUN_TRANSITIONS,
)
from aiki_core._status import (
    RUN_WAITING_STATUSES as RUN_WAITING_STATUSES,
)
from aiki_core._status import (
    TASK_INITIAL_STATUSES as TASK_INITIAL_STATUSES,
)
from aiki_core._status import (
    TASK_RERUN_STATUSES as TASK_RERUN_STATUSES,
)
from aiki_core._status import (
    TASK_TERMINAL_STATUSES as TASK_TERMINAL_STATUSES,
)
from aiki_core._status import (
    TASK_TRANSITIONS as TASK_TRANSITIONS,
)
from aiki_core._status import (
    RunStatus as RunStatus,
)
from aiki_core._status import (
    TaskStatus as TaskStatus,
)
from aiki_core._status import (
    check_run_transition as check_run_transition,
)
from aiki_core._status import (
    check_task_transition as check_task_transition,
)
from aiki_core._wire import ID_PATTERN as ID_PATTERN
from aiki_core._wire import MAX_COUNT as MAX_COUNT
from aiki_core._wire import Cursor as Cursor
from aiki_core._wire import Identifier as Identifier
from aiki_core._wire import Name as Name

__all__ = (
    "AikiError",
    "AikiTimeoutError",
    "AuthenticationError",
    "AwaitChild",
    "AwaitEvent",
    "AwaitRetry",
    "AwaitSleep",
    "CancelRunRequest",
    "ChildRecord",
    "ClaimRequest",
    "ClaimResponse",
    "ClaimedRun",
    "CodecContext",
    "CodecError",
    "CompleteRun",
    "ConflictError",
    "ContinueRun",
    "ConsoleLogger",
    "CreateScheduleRequest",
    "CreateWebhookRequest",
    "CreateWebhookResponse",
    "Cursor",
    "DEFAULT_NAMESPACE",
    "DEFAULT_POOL",
    "DecryptionError",
    "Duration",
    "ErrorBody",
    "ErrorCode",
    "ErrorInfo",
    "ErrorResponse",
    "EventId",
    "EventOrigin",
    "EventRecord",
    "EventWaitRecord",
    "EventDefinition",
    "ExecutableVersion",
    "FailRun",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "ID_PATTERN",
    "Identifier",
    "IdentityCodec",
    "IllegalTransitionError",
    "InvalidRequestError",
    "ListRunsQuery",
    "LogLevel",
    "Logger",
    "MAX_COUNT",
    "MAX_DURATION",
    "MAX_NOTICE_LENGTH",
    "MAX_TASKS_PER_TRANSITION",
    "MAX_WEBHOOK_LIFETIME",
    "MAX_WEBHOOK_SCHEMA_BYTES",
    "Name",
    "Namespace",
    "NonRetryableError",
    "NotFoundError",
    "OverlapPolicy",
    "PayloadCodec",
    "PayloadTooLargeError",
    "PayloadValidationError",
    "PendingWait",
    "PermissionDeniedError",
    "PoolName",
    "RUN_INITIAL_STATUSES",
    "RUN_TERMINAL_STATUSES",
    "RUN_TRANSITIONS",
    "RUN_WAITING_STATUSES",
    "RecordTaskRequest",
    "RecordTaskResponse",
    "ReferenceIdConflictError",
    "ReleaseRun",
    "RemoteError",
    "ReplayDivergenceError",
    "RetryPolicy",
    "RunAction",
    "RunDetail",
    "RunDirective",
    "RunExecution",
    "RunId",
    "RunInterrupt",
    "RunLease",
    "RunLeaseStatus",
    "RunLimitError",
    "RunNotice",
    "RunOutcome",
    "RunPage",
    "RunStatus",
    "RunSummary",
    "RunWait",
    "SchedulableVersion",
    "Schedule",
    "ScheduleId",
    "SchedulePage",
    "SendEventRequest",
    "SendEventResponse",
    "ServerError",
    "ServerLimits",
    "ServerUnavailableError",
    "SleepRecord",
    "StaleRevisionError",
    "StartChildRequest",
    "StartRunRequest",
    "StartRunResponse",
    "StateTransition",
    "StdlibLogger",
    "StorageUnavailableError",
    "SuspendRun",
    "TASK_INITIAL_STATUSES",
    "TASK_RERUN_STATUSES",
    "TASK_TERMINAL_STATUSES",
    "TASK_TRANSITIONS",
    "TaskAddress",
    "TaskAttemptInfo",
    "TaskAttemptRecord",
    "TaskFailedError",
    "TaskId",
    "TaskInvocation",
    "TaskRecord",
    "TaskRunContext",
    "TaskStatus",
    "TaskTimeoutError",
    "TransitionRunRequest",
    "TransitionRunResponse",
    "WebhookId",
    "WorkerApi",
    "WorkerId",
    "WorkflowCancelledError",
    "WorkflowCapability",
    "WorkflowFailedError",
    "WorkflowRunHandle",
    "WorkflowStarter",
    "WorkflowTimeoutError",
    "canonical_json",
    "check_run_transition",
    "check_task_transition",
    "content_hash",
    "error_from_wire",
    "from_millis",
    "new_run_id",
    "new_schedule_id",
    "raise_for_outcome",
    "task_address",
    "to_millis",
    "__version__",
)

# show the public path in reprs and docs (aiki_core.RunStatus, not aiki_core._status.RunStatus)
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("aiki_core._"):
        try:
            _obj.__module__ = __name__
        except (AttributeError, TypeError):  # NewType aliases and constants keep theirs
            pass
