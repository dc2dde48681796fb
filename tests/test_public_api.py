"""Pins the public surface of every distribution.

A name cannot appear in or vanish from a package's `__all__` unnoticed: changing
the surface means changing this file, in the same review.
"""

from __future__ import annotations
import __future__

import importlib
from pathlib import Path

import pytest

EXPECTED_EXPORTS: dict[str, tuple[str, ...]] = {
    "aiki": (
        "AikiError",
        "AikiTimeoutError",
        "AuthenticationError",
        "CatchUpPolicy",
        "ChildRun",
        "Client",
        "CodecError",
        "Concurrency",
        "ConcurrencyKeyError",
        "ConcurrencyLimits",
        "ConcurrencyStrategy",
        "ConflictError",
        "ConsoleLogger",
        "DecryptionError",
        "Endpoints",
        "ErrorInfo",
        "Event",
        "EventResult",
        "IllegalTransitionError",
        "InvalidRequestError",
        "JsonLogger",
        "LogLevel",
        "Logger",
        "NoDryRunWorkerError",
        "NonRetryableError",
        "NotFoundError",
        "OverlapPolicy",
        "ParentClosePolicy",
        "PayloadTooLargeError",
        "PayloadValidationError",
        "PermissionDeniedError",
        "PushSignatureError",
        "RateLimit",
        "RateLimitKeyError",
        "RateLimitNotFoundError",
        "RateLimits",
        "ReferenceIdConflictError",
        "RemoteError",
        "RemoteTask",
        "ReplayDivergenceError",
        "Retention",
        "RetryPolicy",
        "RunId",
        "RunLimitError",
        "RunRecordLimitError",
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
        "TaskCancelledError",
        "TaskContext",
        "TaskFailedError",
        "TaskStatus",
        "TaskTimeoutError",
        "TooManyRequestsError",
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
        "remote_task",
        "task",
        "workflow",
    ),
    "aiki_core": (
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
    ),
    "aiki_task": (
        "RemoteTask",
        "Task",
        "TaskContext",
        "__version__",
        "asgi_app",
        "remote_task",
        "task",
    ),
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
    "aiki_client": (
        "Client",
        "ConcurrencyLimits",
        "Endpoints",
        "RateLimits",
        "Retention",
        "Schedules",
        "WorkflowRunHandle",
        "__version__",
    ),
    "aiki_worker": (
        "PushedRunApp",
        "Worker",
        "__version__",
        "asgi_app",
        "dry_run",
        "lambda_handler",
    ),
    "aiki_crypto": ("AesGcmCodec", "KeyRing", "__version__"),
    "aiki_otel": ("TracingInterceptor", "__version__"),
    "aiki_server": ("ServerSettings", "__version__", "create_app"),
    "aiki_cli": ("__version__",),
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


# aiki_core's public submodules: what the server and the SDK exchange over HTTP, and
# what the SDK packages share among themselves
EXPECTED_CORE_SUBMODULES: dict[str, tuple[str, ...]] = {
    "aiki_core.wire": (
        # the client channel's frames
        "CANCEL",
        "CHANNEL_PATH",
        "MAX_CALLS_IN_FLIGHT",
        "ChannelAnswer",
        "ChannelRequest",
        "FrameError",
        "decode_answer",
        "decode_request",
        "encode_answer",
        "encode_cancel",
        "encode_request",
        # starting, listing and steering runs
        "CancelRunRequest",
        "ListRunsQuery",
        "RunPage",
        "SendEventRequest",
        "SendEventResponse",
        "StartChildRequest",
        "StartRunRequest",
        "StartRunResponse",
        # moving runs between versions
        "MAX_MIGRATED_PER_CALL",
        "MIGRATABLE_STATUSES",
        "DryRunAnswer",
        "DryRunJob",
        "DryRunOutcome",
        "DryRunReceipt",
        "DryRunReport",
        "MigrateRunsRequest",
        "MigrateRunsResponse",
        "MigrationFilter",
        "NotReplayed",
        "RecordedCall",
        "SkippedRun",
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
        # the directives poll, and a task its worker abandoned
        "AbandonedTaskRequest",
        "DirectivesRequest",
        "DirectivesResponse",
        "WatchedRun",
        # webhooks and schedules
        "MAX_BACKFILL",
        "BackfillRequest",
        "BackfillResponse",
        "CreateScheduleRequest",
        "UpdateScheduleRequest",
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
        "MAX_CLAIMED_PER_POLL",
        "MAX_CONCURRENCY_KEY_LENGTH",
        "MAX_COUNT",
        "MAX_DURATION",
        "MAX_DRY_RUNS_IN_HAND",
        "MAX_DRY_RUNS_PER_CALL",
        "MAX_DRY_RUNS_PER_POLL",
        "MAX_DRY_RUN_WAIT",
        "MAX_HELD_RUNS",
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
    ),
    "aiki_core.push": (
        "PUSH_ID_HEADER",
        "PUSH_SIGNATURE_HEADER",
        "PUSH_TIMESTAMP_HEADER",
        "PushRefused",
        "PushSecret",
        "PushVerifier",
        "SignedPushApp",
        "sign_push",
    ),
    "aiki_core.sdk": (
        # seams between the packages
        "EventDefinition",
        "ExecutableVersion",
        "RunExecution",
        "SchedulableVersion",
        "TaskAttemptInfo",
        "TaskInvocation",
        "TaskRunContext",
        "WorkerApi",
        "WorkflowRunHandle",
        "WorkflowStarter",
        # helpers
        "fit_trace_context",
        "intercepted",
        "new_run_id",
        "raise_for_outcome",
    ),
}

# what the private modules of aiki_core export to each other and to no one else: the
# building blocks of the wire models
CORE_INTERNALS = {
    "aiki_core._duration.DurationRange",
    "aiki_core._duration.duration_field",
    "aiki_core._public.show_public_path",
    "aiki_core._wire.Boolean",
    "aiki_core._wire.ClientId",
    "aiki_core._wire.Count",
    "aiki_core._wire.Fingerprint",
    "aiki_core._wire.ID",
    "aiki_core._wire.Integer",
    "aiki_core._wire.NO_NUL",
    "aiki_core._wire.Number",
    "aiki_core._wire.Ordinal",
    "aiki_core._wire.ReferenceId",
    "aiki_core._wire.RequestModel",
    "aiki_core._wire.ResponseModel",
    "aiki_core._wire.Timestamp",
    "aiki_core._wire.VersionName",
    "aiki_core._wire.given",
    "aiki_core._wire.requiring",
    "aiki_core._wire.whole_number",
}


@pytest.mark.parametrize("module", sorted(EXPECTED_CORE_SUBMODULES))
def test_core_submodule_is_pinned_and_resolves(module: str) -> None:
    public = importlib.import_module(module)
    assert public.__all__ == EXPECTED_CORE_SUBMODULES[module]
    for name in public.__all__:
        assert getattr(public, name) is not None, name
    defined = {
        name
        for name in vars(public)
        if not name.startswith("_") and name not in {"annotations", "aiki_core"}
    }
    assert defined <= set(public.__all__), f"not exported: {defined - set(public.__all__)}"


def test_each_core_name_has_one_public_home() -> None:
    import aiki_core

    homes = {"aiki_core": aiki_core.__all__, **EXPECTED_CORE_SUBMODULES}
    seen: dict[str, str] = {}
    for module, names in homes.items():
        for name in names:
            assert name not in seen, f"{name} is in both {seen[name]} and {module}"
            seen[name] = module


def test_the_private_modules_export_nothing_without_a_public_home() -> None:
    import aiki_core

    public = [aiki_core, *map(importlib.import_module, EXPECTED_CORE_SUBMODULES)]
    exported = {id(getattr(module, name)) for module in public for name in module.__all__}
    private = [
        importlib.import_module(f"aiki_core.{path.stem}")
        for path in sorted(Path(aiki_core.__file__).parent.glob("_*.py"))
        if path.stem not in {"__init__", "__about__"}
    ]
    homeless = {
        f"{module.__name__}.{name}"
        for module in private
        for name in module.__all__
        if id(getattr(module, name)) not in exported
    }
    assert homeless == CORE_INTERNALS


def test_wire_models_are_not_at_the_top_level() -> None:
    import aiki_core
    import aiki_core.wire
    from aiki_core._wire import RequestModel, ResponseModel

    def models(base: type) -> set[type]:
        found: set[type] = set(base.__subclasses__())
        for cls in list(found):
            found |= models(cls)
        return found

    every_model = {
        model
        for model in models(RequestModel) | models(ResponseModel)
        if model.__module__.startswith("aiki_core")
    }
    wire = [getattr(aiki_core.wire, name) for name in aiki_core.wire.__all__]
    top = [getattr(aiki_core, name) for name in aiki_core.__all__]
    assert [model for model in every_model if model not in wire] == []
    assert [model for model in every_model if model in top] == []


@pytest.mark.parametrize("module", ["aiki_core", *sorted(EXPECTED_CORE_SUBMODULES)])
def test_core_classes_show_their_public_path(module: str) -> None:
    public = importlib.import_module(module)
    for name in public.__all__:
        value = getattr(public, name)
        if isinstance(value, type):
            assert value.__module__ == module, name
