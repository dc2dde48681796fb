"""Pins the public surface of every distribution.

A name cannot appear in or vanish from a package's `__all__` unnoticed: changing
the surface means changing this file, in the same review.
"""

from __future__ import annotations
import __future__

import importlib

import pytest

EXPECTED_EXPORTS: dict[str, tuple[str, ...]] = {
    "aiki": (
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
    ),
    "aiki_core": (
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
    ),
    "aiki_task": ("Task", "TaskContext", "__version__", "task"),
    "aiki_workflow": (
        "ChildRun",
        "Event",
        "EventResult",
        "Saga",
        "SleepInfo",
        "SleepResult",
        "Workflow",
        "WorkflowRun",
        "WorkflowVersion",
        "__version__",
        "event",
        "workflow",
    ),
    "aiki_client": ("Client", "Schedules", "WorkflowRunHandle", "__version__"),
    "aiki_worker": ("Worker", "__version__"),
    "aiki_crypto": ("AesGcmCodec", "KeyRing", "__version__"),
    "aiki_server": ("ServerSettings", "__version__", "create_app"),
}


@pytest.mark.parametrize("package", sorted(EXPECTED_EXPORTS))
def test_all_is_pinned(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == EXPECTED_EXPORTS[package]


@pytest.mark.parametrize("package", sorted(EXPECTED_EXPORTS))
def test_all_lists_every_public_name(package: str) -> None:
    module = importlib.import_module(package)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, type(importlib))
        and value is not __future__.annotations
    }
    assert public <= set(module.__all__), f"public but not exported: {public - set(module.__all__)}"


def test_the_test_harness_module_is_pinned() -> None:
    import aiki_server.testing

    assert aiki_server.testing.__all__ == (
        "ApiKey",
        "EmbeddedServer",
        "LoggedProcess",
        "ServerProcess",
        "ServerStartError",
        "TestClock",
        "embedded_server",
        "free_port",
        "server_process",
        "serving",
        "start_process",
        "start_server",
    )


@pytest.mark.parametrize("package", sorted(EXPECTED_EXPORTS))
def test_version_matches_distribution_metadata(package: str) -> None:
    from importlib.metadata import version

    module = importlib.import_module(package)
    assert module.__version__ == version(package.replace("_", "-"))


def test_core_classes_show_their_public_path() -> None:
    import aiki_core

    for name in aiki_core.__all__:
        value = getattr(aiki_core, name)
        if isinstance(value, type):
            assert value.__module__ == "aiki_core", name
