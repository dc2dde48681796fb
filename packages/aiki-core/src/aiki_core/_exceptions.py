"""The exception tree of Aiki.

```
AikiError                          any error raised by an Aiki package
├── InvalidRequestError (400)      malformed input: bad JSON, wrong shape, bad query
│   ├── PayloadValidationError (422)  a payload or result does not match its type
│   └── ConcurrencyKeyError        a concurrency key function raised or returned no string
├── AuthenticationError (401)      no or unknown API key
├── PermissionDeniedError (403)    the key may not do this (or a signature is wrong)
├── NotFoundError (404)            an id names nothing the caller can see
│   └── RateLimitNotFoundError     a task or start uses a rate limit nobody defined
├── ConflictError (409)            the request conflicts with the current state
│   ├── ReferenceIdConflictError   a reference id reused with another payload
│   ├── IllegalTransitionError     a status change the state machine forbids
│   ├── StaleRevisionError         a write from a worker whose claim was superseded
│   ├── RunLimitError              a run recorded as many task calls as the server allows
│   ├── RunRecordLimitError        a run holds as many events (or history rows) as allowed
│   └── NoDryRunWorkerError        no live polling worker serves the version to dry-run on
├── PayloadTooLargeError (413)     a body, or one payload in it, over the server's limit
├── TooManyRequestsError (429)     a sender over its rate (a webhook URL's, say)
├── ServerError (500)              the server failed; the request may be retried
│   └── ServerUnavailableError (503)  the server cannot be reached or is shutting down
│       └── StorageUnavailableError   its database is down, restarting or out of disk
├── AikiTimeoutError               a deadline passed (also a builtin TimeoutError)
│   ├── WorkflowTimeoutError       a run's own timeout
│   └── TaskTimeoutError           one task attempt's timeout
├── TaskFailedError                a task call failed for good; carries its error
├── WorkflowFailedError            a run ended as failed; carries the remote error
├── WorkflowCancelledError         a run ended as cancelled
├── NonRetryableError              raise it from a task to fail without retrying
│   └── RateLimitKeyError          a rate limit's key function raised or gave no key
├── RemoteError                    an exception rebuilt from another process
└── CodecError                     a payload could not be encoded or decoded
    └── DecryptionError            wrong key, missing key, or tampered ciphertext

RunInterrupt (BaseException)       engine control flow: suspending or cancelling a run
```

Every error carries the ids involved as attributes, and the same values in
`details`, the JSON object of the wire error `{"error": {"code", "message",
"details"}}`. `to_wire()` builds that object and `error_from_wire()` rebuilds the
typed exception from it, so a client raises the same class the server raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pydantic import JsonValue, ValidationError

    from aiki_core._error_info import ErrorInfo

__all__ = [
    "AikiError",
    "AikiTimeoutError",
    "AuthenticationError",
    "CodecError",
    "ConcurrencyKeyError",
    "ConflictError",
    "DecryptionError",
    "ErrorCode",
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
    "RunInterrupt",
    "RunLimitError",
    "RunRecordLimitError",
    "ServerError",
    "ServerUnavailableError",
    "StaleRevisionError",
    "StorageUnavailableError",
    "TaskTimeoutError",
    "TooManyRequestsError",
    "WorkflowCancelledError",
    "TaskFailedError",
    "WorkflowFailedError",
    "WorkflowTimeoutError",
    "error_from_wire",
]


class ErrorCode(StrEnum):
    """Stable, machine-readable codes of wire errors."""

    AIKI_ERROR = "aiki_error"
    INVALID_REQUEST = "invalid_request"
    PAYLOAD_VALIDATION = "payload_validation"
    CONCURRENCY_KEY = "concurrency_key_invalid"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    PUSH_SIGNATURE = "push_signature_invalid"
    NOT_FOUND = "not_found"
    RATE_LIMIT_NOT_FOUND = "rate_limit_not_found"
    CONFLICT = "conflict"
    REFERENCE_ID_CONFLICT = "reference_id_conflict"
    ILLEGAL_TRANSITION = "illegal_transition"
    STALE_REVISION = "stale_revision"
    RUN_LIMIT = "run_limit_exceeded"
    RUN_RECORD_LIMIT = "run_record_limit_exceeded"
    NO_DRY_RUN_WORKER = "no_dry_run_worker"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    TOO_MANY_REQUESTS = "too_many_requests"
    SERVER_ERROR = "server_error"
    SERVER_UNAVAILABLE = "server_unavailable"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    TIMEOUT = "timeout"
    WORKFLOW_TIMEOUT = "workflow_timeout"
    TASK_TIMEOUT = "task_timeout"
    TASK_CANCELLED = "task_cancelled"
    TASK_FAILED = "task_failed"
    WORKFLOW_FAILED = "workflow_failed"
    WORKFLOW_CANCELLED = "workflow_cancelled"
    NON_RETRYABLE = "non_retryable"
    RATE_LIMIT_KEY = "rate_limit_key"
    REPLAY_DIVERGENCE = "replay_divergence"
    REMOTE_ERROR = "remote_error"
    CODEC_ERROR = "codec_error"
    DECRYPTION_FAILED = "decryption_failed"


_BY_CODE: dict[ErrorCode, type[AikiError]] = {}


class AikiError(Exception):
    """Root of every error raised by Aiki.

    Subclasses set `code` and `status_code`, take the ids involved as constructor
    arguments, and keep each as an attribute of the same name as its `details` key.
    """

    code: ClassVar[ErrorCode] = ErrorCode.AIKI_ERROR
    status_code: ClassVar[int] = 500
    retryable: bool = True
    """Whether a task that raised this may be tried again under its retry policy."""

    def __init__(self, message: str, *, details: Mapping[str, JsonValue] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, JsonValue] = dict(details or {})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # the first class to claim a code owns it; subclasses that inherit it do not
        _BY_CODE.setdefault(cls.code, cls)

    def _restore(self, details: Mapping[str, JsonValue]) -> None:
        """Set the attributes of a wire-rebuilt error from its details."""
        for key, value in details.items():
            if key.isidentifier() and not hasattr(type(self), key):
                setattr(self, key, value)

    def to_wire(self) -> dict[str, JsonValue]:
        """The wire error object: `{"error": {"code", "message", "details"}}`."""
        return {
            "error": {"code": self.code.value, "message": self.message, "details": self.details}
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, details={self.details!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and copy call the class with `args` (the message) by default, which the
        # subclasses that take ids refuse: make the instance without `__init__`, as
        # pickle does for other classes, then set its attributes back
        return _unpickle, (type(self), self.args), self.__dict__


_BY_CODE[ErrorCode.AIKI_ERROR] = AikiError


def error_from_wire(status_code: int, body: Mapping[str, Any]) -> AikiError:
    """Rebuild the typed exception of a wire error body.

    An unknown code (from a newer server) falls back to the class of its status
    code family, so callers can always catch by category.
    """
    error = body.get("error")
    if not isinstance(error, Mapping):
        # not an Aiki error body (a proxy's, say): the constructors of some fallback
        # classes (NotFoundError, PayloadTooLargeError) take ids, so bypass them too
        return _build(_fallback_class(status_code), f"HTTP {status_code}: {dict(body)!r}", {})
    message = str(error.get("message", f"HTTP {status_code}"))
    raw_details = error.get("details")
    details: dict[str, JsonValue] = dict(raw_details) if isinstance(raw_details, Mapping) else {}
    try:
        cls = _BY_CODE[ErrorCode(str(error.get("code")))]
    except ValueError:
        cls = _fallback_class(status_code)
    try:
        return _build(cls, message, details)
    except ValueError:
        # details that break the protocol (a workflow_failed without a valid error,
        # say): keep the category, which the fallback classes restore without parsing
        return _build(_fallback_class(status_code), message, details)


def _retry_after(details: Mapping[str, JsonValue]) -> float | None:
    """The `retry_after` of wire details: seconds, or `None` when absent or not a number."""
    value = details.get("retry_after")
    valid = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return float(value) if valid else None  # type: ignore[arg-type]


def _build(cls: type[AikiError], message: str, details: dict[str, JsonValue]) -> AikiError:
    # bypass the subclass constructors: their arguments are the details keys, which
    # `_restore` turns back into attributes
    exc = cls.__new__(cls)
    AikiError.__init__(exc, message, details=details)
    exc._restore(details)
    return exc


def _unpickle(cls: type[AikiError], args: tuple[Any, ...]) -> AikiError:
    exc = cls.__new__(cls)
    exc.args = args  # set apart: `OSError.__new__` (`AikiTimeoutError`'s) leaves them out
    return exc


def _fallback_class(status_code: int) -> type[AikiError]:
    for cls in (
        InvalidRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        PayloadValidationError,
        ServerUnavailableError,
    ):
        if cls.status_code == status_code:
            return cls
    return ServerError if status_code >= 500 else InvalidRequestError


class InvalidRequestError(AikiError, ValueError):
    """The request is malformed: unparsable JSON, a wrong shape, a bad parameter."""

    code = ErrorCode.INVALID_REQUEST
    status_code = 400
    retryable = False


class PayloadValidationError(InvalidRequestError):
    """A payload, input or result does not match the type it is declared with.

    `errors` lists each problem with its field path (`loc`) and message (`msg`).
    """

    code = ErrorCode.PAYLOAD_VALIDATION
    status_code = 422

    def __init__(self, message: str, *, errors: list[dict[str, JsonValue]] | None = None) -> None:
        self.errors: list[dict[str, JsonValue]] = errors or []
        super().__init__(message, details={"errors": list(self.errors)})

    @classmethod
    def from_pydantic(cls, what: str, exc: ValidationError) -> PayloadValidationError:
        """`what` (e.g. "task 'x' got an invalid payload") with each field path and problem."""
        errors: list[dict[str, JsonValue]] = []
        places: list[str] = []
        for problem in exc.errors():
            path = [str(part) for part in problem["loc"]]
            errors.append({"loc": list(path), "msg": problem["msg"], "type": problem["type"]})
            places.append(f"{'.'.join(path) or '<root>'}: {problem['msg']}")
        return cls(f"{what}: {'; '.join(places)}", errors=errors)


class ConcurrencyKeyError(InvalidRequestError):
    """A workflow's concurrency key function raised, or returned something not a key.

    Raised where the run starts, before anything is sent: no run is created.
    """

    code = ErrorCode.CONCURRENCY_KEY

    def __init__(self, workflow: str, problem: str) -> None:
        self.workflow = workflow
        self.problem = problem
        super().__init__(
            f"the concurrency key of workflow {workflow!r} could not be computed: {problem}",
            details={"workflow": workflow, "problem": problem},
        )


class AuthenticationError(AikiError):
    """The request carries no API key, or one the server does not know."""

    code = ErrorCode.UNAUTHENTICATED
    status_code = 401
    retryable = False


class PermissionDeniedError(AikiError):
    """The caller is known but may not do this (or a webhook signature is wrong)."""

    code = ErrorCode.PERMISSION_DENIED
    status_code = 403
    retryable = False


class PushSignatureError(AuthenticationError):
    """A pushed request's signature, age or delivery id does not check out; nothing ran."""

    code = ErrorCode.PUSH_SIGNATURE


class NotFoundError(AikiError):
    """An id names nothing the caller can see (`resource` says what was looked for)."""

    code = ErrorCode.NOT_FOUND
    status_code = 404
    retryable = False

    def __init__(self, resource: str, resource_id: str, message: str | None = None) -> None:
        self.resource = resource
        self.resource_id = resource_id
        super().__init__(
            message or f"{resource} {resource_id!r} not found",
            details={"resource": resource, "resource_id": resource_id},
        )


class RateLimitNotFoundError(NotFoundError):
    """No rate limit of this name is defined in the namespace.

    Define it first, with the client's `rate_limits.set`, the CLI or the API.
    """

    code = ErrorCode.RATE_LIMIT_NOT_FOUND

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            "rate limit",
            name,
            message=f"rate limit {name!r} is not defined in this namespace",
        )
        self.details["name"] = name


class ConflictError(AikiError):
    """The request conflicts with the current state of what it names."""

    code = ErrorCode.CONFLICT
    status_code = 409
    retryable = False


class ReferenceIdConflictError(ConflictError):
    """A start reused a reference id with a different payload or workflow."""

    code = ErrorCode.REFERENCE_ID_CONFLICT

    def __init__(self, reference_id: str, run_id: str, message: str | None = None) -> None:
        self.reference_id = reference_id
        self.run_id = run_id
        super().__init__(
            message
            or f"reference id {reference_id!r} already started run {run_id} with another payload",
            details={"reference_id": reference_id, "run_id": run_id},
        )


class IllegalTransitionError(ConflictError):
    """A status change that the state machine does not allow."""

    code = ErrorCode.ILLEGAL_TRANSITION

    def __init__(self, entity: str, entity_id: str, current: str, requested: str) -> None:
        self.entity = entity
        self.entity_id = entity_id
        self.current = str(current)
        self.requested = str(requested)
        super().__init__(
            f"{entity} {entity_id} cannot move from {self.current} to {self.requested}",
            details={
                "entity": entity,
                "entity_id": entity_id,
                "current": self.current,
                "requested": self.requested,
            },
        )


class StaleRevisionError(ConflictError):
    """A write carried a revision older than the run's: its claim was superseded."""

    code = ErrorCode.STALE_REVISION

    def __init__(self, run_id: str, revision: int, current_revision: int) -> None:
        self.run_id = run_id
        self.revision = revision
        self.current_revision = current_revision
        super().__init__(
            f"run {run_id} is at revision {current_revision}; a write at {revision} is stale",
            details={"run_id": run_id, "revision": revision, "current_revision": current_revision},
        )


class RunLimitError(ConflictError):
    """A run recorded as many task calls as the server allows; the server failed it.

    A long-lived loop stays under the limit with `run.continue_as_new(payload)`.
    """

    code = ErrorCode.RUN_LIMIT

    def __init__(self, run_id: str, limit: int) -> None:
        self.run_id = run_id
        self.limit = limit
        super().__init__(
            f"run {run_id} has recorded {limit} task calls, the most a run may record;"
            " continue a long-lived loop as a new run (run.continue_as_new)",
            details={"run_id": run_id, "limit": limit},
        )


class RunRecordLimitError(ConflictError):
    """A run holds as many rows of one kind (`events`, `history`) as the server allows.

    The write that would have added more is refused whole. An event refused leaves the
    run as it was; a run at its history bound fails with this error (a long-lived loop
    stays under it with `run.continue_as_new(payload)`).
    """

    code = ErrorCode.RUN_RECORD_LIMIT

    def __init__(self, run_id: str, kind: str, limit: int) -> None:
        self.run_id = run_id
        self.kind = kind
        self.limit = limit
        super().__init__(
            f"run {run_id} holds {limit} {kind} rows, the most a run may hold",
            details={"run_id": run_id, "kind": kind, "limit": limit},
        )


class NoDryRunWorkerError(ConflictError):
    """A dry run found no live polling worker that serves the version to replay on.

    A version served only by a push endpoint is dry-run locally instead:
    `aiki_worker.dry_run(version, await handle.detail())`.
    """

    code = ErrorCode.NO_DRY_RUN_WORKER

    def __init__(self, workflow: str, version: str) -> None:
        self.workflow = workflow
        self.version = version
        super().__init__(
            f"no live polling worker serves workflow {workflow!r} version {version!r}, so no"
            " worker can replay the dry run; start one, or (for a version served by a push"
            " endpoint) replay the run locally with aiki_worker.dry_run(version, run_detail)",
            details={"workflow": workflow, "version": version},
        )


class PayloadTooLargeError(AikiError):
    """A request body, or one payload in it (`field`), exceeds the server's limit."""

    code = ErrorCode.PAYLOAD_TOO_LARGE
    status_code = 413
    retryable = False

    def __init__(self, size: int, limit: int, field: str | None = None) -> None:
        self.size = size
        self.limit = limit
        self.field = field
        """The largest part of the body (`input`, `action.result`, ...), when known."""
        details: dict[str, JsonValue] = {"size": size, "limit": limit}
        what = "body"
        if field is not None:
            details["field"] = field
            what = f"body (mostly {field!r})"
        super().__init__(
            f"{what} of {size} bytes exceeds the server's limit of {limit} bytes", details=details
        )


class TooManyRequestsError(AikiError):
    """The sender went over its rate; `retry_after` seconds from now it may send again."""

    code = ErrorCode.TOO_MANY_REQUESTS
    status_code = 429
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(
            message, details=None if retry_after is None else {"retry_after": retry_after}
        )

    def _restore(self, details: Mapping[str, JsonValue]) -> None:
        super()._restore(details)
        self.retry_after = _retry_after(details)


class ServerError(AikiError):
    """The server failed to handle a request; trying again may succeed."""

    code = ErrorCode.SERVER_ERROR
    status_code = 500
    retry_after: float | None = None
    """Seconds the server (or a proxy) asked to wait before trying again, if it said."""


class ServerUnavailableError(ServerError):
    """The server cannot be reached, is shutting down, or cannot serve requests for now.

    `retry_after` is how many seconds the server asked the caller to wait before
    trying again (its `Retry-After`), or `None` when it named no time.
    """

    code = ErrorCode.SERVER_UNAVAILABLE
    status_code = 503

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(
            message, details=None if retry_after is None else {"retry_after": retry_after}
        )

    def _restore(self, details: Mapping[str, JsonValue]) -> None:
        super()._restore(details)
        self.retry_after = _retry_after(details)


class StorageUnavailableError(ServerUnavailableError):
    """The server's database cannot serve the request for now: down, restarting, out of disk.

    The request was refused or rolled back; sending it again after `retry_after`
    seconds may succeed. The server's `/health` tells whether writes are failing.
    """

    code = ErrorCode.STORAGE_UNAVAILABLE


class AikiTimeoutError(AikiError, TimeoutError):
    """A deadline passed."""

    code = ErrorCode.TIMEOUT
    status_code = 408


class WorkflowTimeoutError(AikiTimeoutError):
    """A run reached its own timeout and was ended as failed."""

    code = ErrorCode.WORKFLOW_TIMEOUT
    retryable = False

    def __init__(self, run_id: str, timeout_ms: int) -> None:
        self.run_id = run_id
        self.timeout_ms = timeout_ms
        super().__init__(
            f"run {run_id} exceeded its timeout of {timeout_ms} ms",
            details={"run_id": run_id, "timeout_ms": timeout_ms},
        )


class ReplayDivergenceError(AikiError):
    """A replay asked for a task not on record while recorded calls were still unused.

    Raised under a version's `strict_replay`: the code no longer makes the calls its
    history holds, so running the new task could repeat or skip real work.
    """

    code = ErrorCode.REPLAY_DIVERGENCE
    status_code = 409
    retryable = False

    def __init__(self, run_id: str, new_call: str, unused: list[str]) -> None:
        self.run_id = run_id
        self.new_call = new_call
        self.unused = unused
        super().__init__(
            f"run {run_id} diverged from its history: it calls {new_call}, which is not on"
            f" record, while recorded calls are still unused: {'; '.join(unused)}",
            details={"run_id": run_id, "new_call": new_call, "unused": list(unused)},
        )


class TaskTimeoutError(AikiTimeoutError):
    """One attempt of a task ran past its timeout and was cancelled."""

    code = ErrorCode.TASK_TIMEOUT

    def __init__(self, run_id: str, task_name: str, attempt: int, timeout_ms: int) -> None:
        self.run_id = run_id
        self.task_name = task_name
        self.attempt = attempt
        self.timeout_ms = timeout_ms
        super().__init__(
            f"task {task_name!r} of run {run_id} timed out after {timeout_ms} ms"
            f" (attempt {attempt})",
            details={
                "run_id": run_id,
                "task_name": task_name,
                "attempt": attempt,
                "timeout_ms": timeout_ms,
            },
        )


class TaskCancelledError(AikiError):
    """A task attempt was cancelled: what `TaskContext.raise_if_cancelled()` raises.

    Its run was cancelled or taken away, the worker gave it back, or its timeout passed.
    """

    code = ErrorCode.TASK_CANCELLED
    status_code = 409
    retryable = False

    def __init__(self, run_id: str, task_name: str, attempt: int) -> None:
        self.run_id = run_id
        self.task_name = task_name
        self.attempt = attempt
        super().__init__(
            f"task {task_name!r} of run {run_id} was cancelled (attempt {attempt})",
            details={"run_id": run_id, "task_name": task_name, "attempt": attempt},
        )


class TaskFailedError(AikiError):
    """A task call failed for good (its retries ran out, or the error was not retryable).

    The workflow sees this same error the first time and on every replay; `error` is
    what the last attempt raised, also chained as `__cause__`.
    """

    code = ErrorCode.TASK_FAILED
    status_code = 409

    def __init__(self, run_id: str, task_name: str, error: ErrorInfo) -> None:
        self.run_id = run_id
        self.task_name = task_name
        self.error = error
        self.retryable = error.retryable
        super().__init__(
            f"task {task_name!r} failed: {error.type}: {error.message}",
            details={
                "run_id": run_id,
                "task_name": task_name,
                "error": error.model_dump(mode="json"),
            },
        )
        self.__cause__ = error.to_exception()

    def _restore(self, details: Mapping[str, JsonValue]) -> None:
        from aiki_core._error_info import ErrorInfo

        self.run_id = str(details.get("run_id"))
        self.task_name = str(details.get("task_name"))
        self.error = ErrorInfo.model_validate(details.get("error"))
        self.retryable = self.error.retryable


class WorkflowFailedError(AikiError):
    """A run ended as failed; `error` is what it failed with, causes included."""

    code = ErrorCode.WORKFLOW_FAILED
    status_code = 409

    def __init__(self, run_id: str, error: ErrorInfo) -> None:
        self.run_id = run_id
        self.error = error
        super().__init__(
            f"run {run_id} failed: {error.type}: {error.message}",
            details={"run_id": run_id, "error": error.model_dump(mode="json")},
        )

    def _restore(self, details: Mapping[str, JsonValue]) -> None:
        from aiki_core._error_info import ErrorInfo

        self.run_id = str(details.get("run_id"))
        self.error = ErrorInfo.model_validate(details.get("error"))


class WorkflowCancelledError(AikiError):
    """A run ended as cancelled."""

    code = ErrorCode.WORKFLOW_CANCELLED
    status_code = 409
    retryable = False

    def __init__(self, run_id: str, reason: str | None = None) -> None:
        self.run_id = run_id
        self.reason = reason
        suffix = f": {reason}" if reason else ""
        super().__init__(
            f"run {run_id} was cancelled{suffix}", details={"run_id": run_id, "reason": reason}
        )


class NonRetryableError(AikiError):
    """Raise from a task (or workflow) to fail at once, whatever its retry policy says."""

    code = ErrorCode.NON_RETRYABLE
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)


class RateLimitKeyError(NonRetryableError):
    """The key function of a `RateLimit` raised, or returned no usable key.

    A task's attempt fails without retrying (the key function sees the same input every
    time); a run's start is refused. `owner` says whose rate limit it is (a task, or a
    workflow version).
    """

    code = ErrorCode.RATE_LIMIT_KEY

    def __init__(self, rate_limit: str, owner: str, problem: str) -> None:
        self.rate_limit = rate_limit
        self.owner = owner
        AikiError.__init__(
            self,
            f"the key function of rate limit {rate_limit!r} of {owner} failed: {problem}",
            details={"rate_limit": rate_limit, "owner": owner},
        )


class RemoteError(AikiError):
    """An exception raised in another process, rebuilt from its `ErrorInfo`.

    `type` is the original class's qualified name; `__cause__` is the rebuilt cause.
    """

    code = ErrorCode.REMOTE_ERROR

    def __init__(self, info: ErrorInfo) -> None:
        self.info = info
        self.retryable = info.retryable
        super().__init__(f"{info.type}: {info.message}", details=info.model_dump(mode="json"))

    def _restore(self, details: Mapping[str, JsonValue]) -> None:
        from aiki_core._error_info import ErrorInfo

        self.info = ErrorInfo.model_validate(details)
        self.retryable = self.info.retryable

    @property
    def type(self) -> str:
        """Qualified name of the original exception class."""
        return self.info.type


class CodecError(AikiError):
    """A payload could not be encoded or decoded by the configured codec."""

    code = ErrorCode.CODEC_ERROR
    status_code = 400
    retryable = False


class DecryptionError(CodecError):
    """Ciphertext could not be decrypted: unknown key, wrong key, or tampering."""

    code = ErrorCode.DECRYPTION_FAILED

    def __init__(self, key_id: str, message: str | None = None) -> None:
        self.key_id = key_id
        super().__init__(
            message or f"cannot decrypt a payload sealed with key {key_id!r}",
            details={"key_id": key_id},
        )


class RunInterrupt(BaseException):
    """Base of the engine's control-flow signals (suspend a run, cancel a run).

    It derives from `BaseException` so that user code's `except Exception` cannot
    swallow a suspension or a cancellation by accident.
    """
