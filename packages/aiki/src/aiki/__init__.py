"""Aiki for Python in one import: tasks, workflows, the client and the worker.

`pip install aiki` installs aiki-core, aiki-task, aiki-workflow, aiki-client and
aiki-worker; this module re-exports what application code uses from them, and
nothing else (no logic of its own). The names are the packages' own objects:
`aiki.task is aiki_task.task`. Wire models, codec protocols and the other building
blocks of the packages stay in their own modules (`aiki_core`, ...).

The extras install the rest, imported from their own packages: `aiki[crypto]`
(`from aiki_crypto import AesGcmCodec, KeyRing`), `aiki[server]` (`aiki-server`,
`aiki_server.testing`).
"""

from __future__ import annotations

from aiki.__about__ import __version__
from aiki_client import Client, Schedules, WorkflowRunHandle
from aiki_core import (
    AikiError,
    AikiTimeoutError,
    AuthenticationError,
    CodecError,
    ConflictError,
    ConsoleLogger,
    DecryptionError,
    ErrorInfo,
    IllegalTransitionError,
    InvalidRequestError,
    Logger,
    LogLevel,
    NonRetryableError,
    NotFoundError,
    OverlapPolicy,
    PayloadTooLargeError,
    PayloadValidationError,
    PermissionDeniedError,
    ReferenceIdConflictError,
    RemoteError,
    ReplayDivergenceError,
    RetryPolicy,
    RunId,
    RunLimitError,
    RunStatus,
    ServerError,
    ServerUnavailableError,
    StaleRevisionError,
    StdlibLogger,
    StorageUnavailableError,
    TaskFailedError,
    TaskStatus,
    TaskTimeoutError,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowTimeoutError,
)
from aiki_task import Task, TaskContext, task
from aiki_worker import Worker
from aiki_workflow import (
    ChildRun,
    Event,
    EventResult,
    Saga,
    SleepInfo,
    SleepResult,
    Workflow,
    WorkflowRun,
    WorkflowVersion,
    event,
    workflow,
)

__all__ = (
    "AikiError",
    "AikiTimeoutError",
    "AuthenticationError",
    "ChildRun",
    "Client",
    "CodecError",
    "ConflictError",
    "ConsoleLogger",
    "DecryptionError",
    "ErrorInfo",
    "Event",
    "EventResult",
    "IllegalTransitionError",
    "InvalidRequestError",
    "LogLevel",
    "Logger",
    "NonRetryableError",
    "NotFoundError",
    "OverlapPolicy",
    "PayloadTooLargeError",
    "PayloadValidationError",
    "PermissionDeniedError",
    "ReferenceIdConflictError",
    "RemoteError",
    "ReplayDivergenceError",
    "RetryPolicy",
    "RunId",
    "RunLimitError",
    "RunStatus",
    "Saga",
    "Schedules",
    "ServerError",
    "ServerUnavailableError",
    "SleepInfo",
    "SleepResult",
    "StaleRevisionError",
    "StdlibLogger",
    "StorageUnavailableError",
    "Task",
    "TaskContext",
    "TaskFailedError",
    "TaskStatus",
    "TaskTimeoutError",
    "Worker",
    "Workflow",
    "WorkflowCancelledError",
    "WorkflowFailedError",
    "WorkflowRun",
    "WorkflowRunHandle",
    "WorkflowTimeoutError",
    "WorkflowVersion",
    "__version__",
    "event",
    "task",
    "workflow",
)
