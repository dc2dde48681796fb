"""The protocol every Aiki package shares, and the names its users touch.

This top level holds what application code imports: the run and task statuses,
`RetryPolicy`, `RateLimit`, `OverlapPolicy`, `ParentClosePolicy` and `Concurrency`,
the `AikiError` tree with `ErrorInfo`, `RunId`, the `PayloadCodec` protocol with
`CodecContext` and `IdentityCodec`, and the `Logger` protocol with its implementations, and the
`Interceptor` whose hooks wrap starts, run executions and task attempts (tracing).

The rest has a public home of its own:

- `aiki_core.wire`: what the server and the SDK exchange over HTTP (requests,
  responses, records, limits, field types, the state machine, error bodies, content
  hashes);
- `aiki_core.sdk`: what the SDK packages share and the server does not (the protocols
  through which they meet, and their common helpers);
- `aiki_core.push`: how the server signs the work it pushes to an endpoint and how
  the endpoint checks it, and what a push carries.
"""

from __future__ import annotations

from aiki_core.__about__ import __version__
from aiki_core._codec import CodecContext, IdentityCodec, PayloadCodec
from aiki_core._concurrency import Concurrency, ConcurrencyStrategy
from aiki_core._error_info import ErrorInfo
from aiki_core._exceptions import (
    AikiError,
    AikiTimeoutError,
    AuthenticationError,
    CodecError,
    ConcurrencyKeyError,
    ConflictError,
    DecryptionError,
    IllegalTransitionError,
    InvalidRequestError,
    NoDryRunWorkerError,
    NonRetryableError,
    NotFoundError,
    PayloadTooLargeError,
    PayloadValidationError,
    PermissionDeniedError,
    PushSignatureError,
    RateLimitKeyError,
    RateLimitNotFoundError,
    ReferenceIdConflictError,
    RemoteError,
    ReplayDivergenceError,
    RunInterrupt,
    RunLimitError,
    RunRecordLimitError,
    ServerError,
    ServerUnavailableError,
    StaleRevisionError,
    StorageUnavailableError,
    TaskCancelledError,
    TaskFailedError,
    TaskTimeoutError,
    TooManyRequestsError,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowTimeoutError,
)
from aiki_core._ids import RunId
from aiki_core._interceptors import Interceptor, RunExecutionInfo, StartRunInfo, TaskExecutionInfo
from aiki_core._logging import ConsoleLogger, JsonLogger, Logger, LogLevel, StdlibLogger
from aiki_core._parent_close import ParentClosePolicy
from aiki_core._public import show_public_path as _show_public_path
from aiki_core._rate_limits import RateLimit
from aiki_core._retry import RetryPolicy
from aiki_core._schedules import CatchUpPolicy, OverlapPolicy
from aiki_core._status import RunStatus, TaskStatus

__all__ = (
    # statuses and policies
    "CatchUpPolicy",
    "Concurrency",
    "ConcurrencyStrategy",
    "OverlapPolicy",
    "ParentClosePolicy",
    "RateLimit",
    "RetryPolicy",
    "RunId",
    "RunStatus",
    "TaskStatus",
    # errors
    "AikiError",
    "AikiTimeoutError",
    "AuthenticationError",
    "CodecError",
    "ConcurrencyKeyError",
    "ConflictError",
    "DecryptionError",
    "ErrorInfo",
    "IllegalTransitionError",
    "InvalidRequestError",
    "NoDryRunWorkerError",
    "NonRetryableError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PayloadValidationError",
    "PermissionDeniedError",
    "PushSignatureError",
    "RateLimitKeyError",
    "RateLimitNotFoundError",
    "ReferenceIdConflictError",
    "RemoteError",
    "ReplayDivergenceError",
    "RunInterrupt",
    "RunLimitError",
    "RunRecordLimitError",
    "ServerError",
    "ServerUnavailableError",
    "StaleRevisionError",
    "StorageUnavailableError",
    "TaskFailedError",
    "TaskCancelledError",
    "TaskTimeoutError",
    "TooManyRequestsError",
    "WorkflowCancelledError",
    "WorkflowFailedError",
    "WorkflowTimeoutError",
    # payload codecs
    "CodecContext",
    "IdentityCodec",
    "PayloadCodec",
    # logging
    "ConsoleLogger",
    "JsonLogger",
    "LogLevel",
    "Logger",
    "StdlibLogger",
    # interceptors (tracing)
    "Interceptor",
    "RunExecutionInfo",
    "StartRunInfo",
    "TaskExecutionInfo",
    "__version__",
)

# reprs and docs show aiki_core.RunStatus, not aiki_core._status.RunStatus
_show_public_path(__name__, __all__, globals())
