from __future__ import annotations

import copy
import itertools
import json
import pickle
from typing import TYPE_CHECKING, Any

import pytest

import aiki_core
from aiki_core import (
    AikiError,
    AikiTimeoutError,
    AuthenticationError,
    CodecError,
    ConcurrencyKeyError,
    ConflictError,
    DecryptionError,
    ErrorInfo,
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
from aiki_core.wire import ErrorCode, error_from_wire

if TYPE_CHECKING:
    from collections.abc import Callable

CAUSE = ErrorInfo(type="KeyError", message="'sku'", stack="Traceback ...\n", retryable=True)
FAILURE = ErrorInfo(
    type="shop.PaymentError",
    message="card declined",
    retryable=False,
    details={"attempts": 3},
    cause=CAUSE,
)

# each error with the attributes its constructor sets from the ids it takes
WITH_IDS: list[tuple[AikiError, tuple[str, ...]]] = [
    (NotFoundError("run", "r-1"), ("resource", "resource_id")),
    (NotFoundError("schedule", "s-1", "no such schedule"), ("resource", "resource_id")),
    (ReferenceIdConflictError("order-42", "r-1"), ("reference_id", "run_id")),
    (ConcurrencyKeyError("orders", "ValueError: no customer"), ("workflow", "problem")),
    (
        IllegalTransitionError("run", "r-1", "completed", "queued"),
        ("entity", "entity_id", "current", "requested"),
    ),
    (StaleRevisionError("r-1", 2, 5), ("run_id", "revision", "current_revision")),
    (RunLimitError("r-1", 10_000), ("run_id", "limit")),
    (RunRecordLimitError("r-1", "events", 10_000), ("run_id", "kind", "limit")),
    (NoDryRunWorkerError("orders", "1.1.0"), ("workflow", "version")),
    (RateLimitNotFoundError("openai"), ("resource", "resource_id", "name")),
    (RateLimitKeyError("openai", "task 'summarise'", "KeyError: 'u'"), ("rate_limit", "owner")),
    (PayloadTooLargeError(2_000_000, 1_048_576), ("size", "limit")),
    (
        PayloadValidationError(
            "input does not match", errors=[{"loc": ["amount"], "msg": "must be positive"}]
        ),
        ("errors",),
    ),
    (WorkflowTimeoutError("r-1", 60_000), ("run_id", "timeout_ms")),
    (
        ReplayDivergenceError("r-1", "charge({'amount': 5})", ["charge({'amount': 4}) #0"]),
        ("run_id", "new_call", "unused"),
    ),
    (TaskTimeoutError("r-1", "charge", 2, 5_000), ("run_id", "task_name", "attempt", "timeout_ms")),
    (TaskCancelledError("r-1", "charge", 2), ("run_id", "task_name", "attempt")),
    (WorkflowCancelledError("r-1", "customer asked"), ("run_id", "reason")),
    (WorkflowCancelledError("r-1"), ("run_id", "reason")),
    (DecryptionError("key-2024"), ("key_id",)),
    (DecryptionError("key-2024", "tampered ciphertext"), ("key_id",)),
    (WorkflowFailedError("r-1", FAILURE), ("run_id", "error")),
    (TaskFailedError("r-1", "charge-card", FAILURE), ("run_id", "task_name", "error")),
    (RemoteError(FAILURE), ("info", "type", "retryable")),
    (ServerUnavailableError("draining", retry_after=1.5), ("retry_after",)),
    (TooManyRequestsError("slow down", retry_after=30.0), ("retry_after",)),
    (StorageUnavailableError("disk full", retry_after=2), ("retry_after",)),
]

PLAIN: list[AikiError] = [
    AikiError("something broke", details={"hint": "retry"}),
    InvalidRequestError("limit must be positive"),
    AuthenticationError("no API key"),
    PermissionDeniedError("key may not cancel runs"),
    PushSignatureError("no signature of a known secret matches the push"),
    ConflictError("already paused"),
    ServerError("database down"),
    ServerUnavailableError("shutting down"),
    AikiTimeoutError("deadline passed"),
    NonRetryableError("card stolen"),
    CodecError("not base64"),
]


def _name(error: AikiError) -> str:
    return type(error).__name__


def _exported_error_classes() -> list[type[AikiError]]:
    found = [getattr(aiki_core, name) for name in aiki_core.__all__]
    return [obj for obj in found if isinstance(obj, type) and issubclass(obj, AikiError)]


@pytest.mark.parametrize(("error", "attributes"), WITH_IDS, ids=lambda v: type(v).__name__)
def test_error_with_ids_survives_the_wire(error: AikiError, attributes: tuple[str, ...]) -> None:
    body = json.loads(json.dumps(error.to_wire()))
    rebuilt = error_from_wire(error.status_code, body)
    assert type(rebuilt) is type(error)
    assert rebuilt.message == error.message
    assert str(rebuilt) == str(error)
    assert rebuilt.args == error.args == (error.message,)
    assert rebuilt.details == error.details
    assert rebuilt.retryable == error.retryable
    for attribute in attributes:
        assert getattr(rebuilt, attribute) == getattr(error, attribute), attribute


@pytest.mark.parametrize(
    "error", [error for error, _ in WITH_IDS] + PLAIN, ids=lambda v: type(v).__name__
)
def test_an_error_survives_pickle_and_copy(error: AikiError) -> None:
    # a process pool, a multiprocessing queue or a deepcopy of a test's state does both
    for again in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(again) is type(error)
        assert (str(again), again.args, again.details) == (str(error), error.args, error.details)
        assert vars(again) == vars(error)


@pytest.mark.parametrize("error", PLAIN, ids=_name)
def test_plain_error_survives_the_wire(error: AikiError) -> None:
    rebuilt = error_from_wire(error.status_code, json.loads(json.dumps(error.to_wire())))
    assert type(rebuilt) is type(error)
    assert (rebuilt.message, rebuilt.details) == (error.message, error.details)


def test_wire_body_shape() -> None:
    error = NotFoundError("run", "r-1")
    assert error.to_wire() == {
        "error": {
            "code": "not_found",
            "message": "run 'r-1' not found",
            "details": {"resource": "run", "resource_id": "r-1"},
        }
    }
    assert error.status_code == 404


def test_ids_are_in_details_and_attributes() -> None:
    error = TaskTimeoutError("r-1", "charge", 2, 5_000)
    assert error.details == {
        "run_id": "r-1",
        "task_name": "charge",
        "attempt": 2,
        "timeout_ms": 5000,
    }
    assert (error.run_id, error.task_name, error.attempt, error.timeout_ms) == (
        "r-1",
        "charge",
        2,
        5000,
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, InvalidRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (422, PayloadValidationError),
        (503, ServerUnavailableError),
        (500, ServerError),
        (502, ServerError),
        (504, ServerError),
        (418, InvalidRequestError),
        (429, InvalidRequestError),
    ],
)
def test_unknown_code_falls_back_by_status(status: int, expected: type[AikiError]) -> None:
    body = {"error": {"code": "from_a_newer_server", "message": "new", "details": {"x": 1}}}
    rebuilt = error_from_wire(status, body)
    assert type(rebuilt) is expected
    assert rebuilt.message == "new"
    assert rebuilt.details == {"x": 1}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, InvalidRequestError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (422, PayloadValidationError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerUnavailableError),
        (418, InvalidRequestError),
    ],
)
def test_body_without_error_still_gives_a_typed_error(
    status: int, expected: type[AikiError]
) -> None:
    rebuilt = error_from_wire(status, {"detail": "Bad Gateway from the proxy"})
    assert type(rebuilt) is expected
    assert rebuilt.message.startswith(f"HTTP {status}")
    assert "Bad Gateway from the proxy" in rebuilt.message
    assert rebuilt.details == {}


def test_malformed_error_parts_are_tolerated() -> None:
    rebuilt = error_from_wire(409, {"error": {"code": "conflict", "details": ["not", "a map"]}})
    assert type(rebuilt) is ConflictError
    assert rebuilt.message == "HTTP 409"
    assert rebuilt.details == {}
    no_code = error_from_wire(404, {"error": {"message": "gone"}})
    assert type(no_code) is NotFoundError


@pytest.mark.parametrize("code", ["workflow_failed", "remote_error"])
def test_structured_details_that_break_the_protocol_keep_the_category(code: str) -> None:
    body = {"error": {"code": code, "message": "boom", "details": {"error": "not an ErrorInfo"}}}
    rebuilt = error_from_wire(409, body)
    assert type(rebuilt) is ConflictError
    assert rebuilt.message == "boom"
    assert error_from_wire(500, body).__class__ is aiki_core.ServerError


def test_each_error_code_belongs_to_one_class() -> None:
    classes = _exported_error_classes()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))
    assert set(codes) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_rebuilds_its_class(code: ErrorCode) -> None:
    samples = [error for error, _ in WITH_IDS] + PLAIN
    sample = next(error for error in samples if error.code is code)
    body: dict[str, Any] = {
        "error": {"code": code.value, "message": "m", "details": sample.details}
    }
    rebuilt = error_from_wire(599, body)
    assert type(rebuilt) is type(sample)
    assert rebuilt.code is code


def test_unavailable_errors_carry_when_to_try_again() -> None:
    error = StorageUnavailableError("the database is restarting", retry_after=2)
    assert isinstance(error, ServerUnavailableError)
    assert error.status_code == 503
    assert error.retryable
    assert error.to_wire()["error"] == {
        "code": "storage_unavailable",
        "message": "the database is restarting",
        "details": {"retry_after": 2},
    }
    # an older server's (or a proxy's) 503 names no time; a nonsensical one is dropped
    proxied = error_from_wire(503, {"detail": "Service Unavailable"})
    assert isinstance(proxied, ServerUnavailableError)
    assert proxied.retry_after is None
    for bad in ("soon", -1, True, None):
        details = {"retry_after": bad}
        body = {"error": {"code": "storage_unavailable", "message": "m", "details": details}}
        rebuilt = error_from_wire(503, body)
        assert isinstance(rebuilt, StorageUnavailableError)
        assert rebuilt.retry_after is None


def test_aiki_timeout_is_a_builtin_timeout() -> None:
    assert issubclass(AikiTimeoutError, TimeoutError)
    with pytest.raises(TimeoutError):
        raise WorkflowTimeoutError("r-1", 10)
    rebuilt = error_from_wire(408, TaskTimeoutError("r-1", "charge", 1, 10).to_wire())
    assert type(rebuilt) is TaskTimeoutError
    assert isinstance(rebuilt, TimeoutError)


def test_categories_can_be_caught_by_base_class() -> None:
    assert issubclass(PayloadValidationError, InvalidRequestError)
    assert issubclass(InvalidRequestError, ValueError)
    for cls in (ReferenceIdConflictError, IllegalTransitionError, StaleRevisionError):
        assert issubclass(cls, ConflictError)
    assert issubclass(ServerUnavailableError, ServerError)
    assert issubclass(DecryptionError, CodecError)
    assert all(issubclass(cls, AikiError) for cls in _exported_error_classes())


class _Suspend(RunInterrupt):
    pass


def _swallow_exceptions() -> None:
    try:
        raise _Suspend
    except Exception:  # the point: this must not catch it
        pytest.fail("except Exception caught a RunInterrupt")


def test_run_interrupt_escapes_except_exception() -> None:
    assert issubclass(RunInterrupt, BaseException)
    assert not issubclass(RunInterrupt, Exception)
    assert not issubclass(RunInterrupt, AikiError)
    with pytest.raises(_Suspend):
        _swallow_exceptions()


def test_retryable_flags() -> None:
    assert AikiError("x").retryable
    assert ServerError("x").retryable
    assert not NonRetryableError("x").retryable
    assert not InvalidRequestError("x").retryable
    assert not WorkflowTimeoutError("r", 1).retryable
    assert RemoteError(CAUSE).retryable
    assert not RemoteError(FAILURE).retryable


def test_task_failed_chains_the_remote_error() -> None:
    error = TaskFailedError("r-1", "charge-card", FAILURE)
    assert error.retryable == FAILURE.retryable
    assert isinstance(error.__cause__, aiki_core.RemoteError)
    assert error.__cause__.info == FAILURE
    assert "charge-card" in error.message


def test_workflow_failed_carries_the_error() -> None:
    error = WorkflowFailedError("r-1", FAILURE)
    assert str(error) == "run r-1 failed: shop.PaymentError: card declined"
    rebuilt = error_from_wire(409, error.to_wire())
    assert isinstance(rebuilt, WorkflowFailedError)
    assert rebuilt.error == FAILURE
    assert rebuilt.error.cause == CAUSE


def test_remote_error_names_the_original_type() -> None:
    error = RemoteError(FAILURE)
    assert error.type == "shop.PaymentError"
    assert str(error) == "shop.PaymentError: card declined"
    assert error.info == FAILURE


# -- ErrorInfo --------------------------------------------------------------------------


class PaymentError(Exception):
    class Declined(Exception):
        pass


def _raise_value_error() -> None:
    raise ValueError("bad amount")


def _raise_with_cause() -> None:
    try:
        _raise_value_error()
    except ValueError as exc:
        raise RuntimeError("charge failed") from exc


def _raise_in_handler() -> None:
    try:
        _raise_value_error()
    except ValueError:
        raise RuntimeError("cleanup failed")  # noqa: B904 -- the implicit context is the point


def _raise_from_none() -> None:
    try:
        _raise_value_error()
    except ValueError:
        raise RuntimeError("replaced") from None


def _raise_remote_cause() -> None:
    try:
        raise FAILURE.to_exception()
    except RemoteError as exc:
        raise RuntimeError("step failed") from exc


def _caught(raiser: Callable[[], None]) -> BaseException:
    try:
        raiser()
    except Exception as exc:
        return exc
    raise AssertionError("nothing was raised")


def test_type_is_the_qualified_name() -> None:
    assert ErrorInfo.from_exception(KeyError("x")).type == "KeyError"
    assert ErrorInfo.from_exception(NotFoundError("run", "r")).type == "aiki_core.NotFoundError"
    local = ErrorInfo.from_exception(PaymentError("no"))
    assert local.type == f"{PaymentError.__module__}.PaymentError"
    assert not local.type.startswith("builtins")
    nested = ErrorInfo.from_exception(PaymentError.Declined("no"))
    assert nested.type == f"{PaymentError.__module__}.PaymentError.Declined"


def test_message_and_stack() -> None:
    exc = _caught(_raise_value_error)
    info = ErrorInfo.from_exception(exc)
    assert info.message == "bad amount"
    assert info.stack is not None
    assert "_raise_value_error" in info.stack
    assert "ValueError: bad amount" in info.stack
    assert ErrorInfo.from_exception(exc, include_stack=False).stack is None
    # an exception that was never raised has no traceback
    assert ErrorInfo.from_exception(ValueError("fresh")).stack is None


def test_explicit_cause_chain() -> None:
    info = ErrorInfo.from_exception(_caught(_raise_with_cause))
    assert [(link.type, link.message) for link in info.causes()] == [
        ("RuntimeError", "charge failed"),
        ("ValueError", "bad amount"),
    ]
    assert info.cause is not None
    assert info.cause.stack is not None
    assert "_raise_value_error" in info.cause.stack
    # each link's stack is its own, not the whole chain
    assert info.stack is not None
    assert "bad amount" not in info.stack


def test_implicit_context_chain() -> None:
    info = ErrorInfo.from_exception(_caught(_raise_in_handler))
    assert [link.message for link in info.causes()] == ["cleanup failed", "bad amount"]


def test_from_none_suppresses_the_context() -> None:
    info = ErrorInfo.from_exception(_caught(_raise_from_none))
    assert info.message == "replaced"
    assert info.cause is None


def test_cause_cycle_terminates() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__cause__ = second
    second.__cause__ = first
    info = ErrorInfo.from_exception(first)
    assert [link.message for link in info.causes()] == ["a", "b"]


def test_long_chain_is_cut_at_sixteen() -> None:
    chain = [ValueError(f"link {n}") for n in range(20)]
    for outer, inner in itertools.pairwise(chain):
        outer.__cause__ = inner
    info = ErrorInfo.from_exception(chain[0])
    assert [link.message for link in info.causes()] == [f"link {n}" for n in range(16)]


def test_retryable() -> None:
    assert ErrorInfo.from_exception(ValueError("x")).retryable is True
    assert ErrorInfo.from_exception(NonRetryableError("x")).retryable is False
    assert ErrorInfo.from_exception(InvalidRequestError("x")).retryable is False
    assert ErrorInfo.from_exception(ServerError("x")).retryable is True


def test_aiki_error_code_and_details_are_captured() -> None:
    info = ErrorInfo.from_exception(StaleRevisionError("r-1", 2, 5))
    assert info.code == "stale_revision"
    assert info.details == {"run_id": "r-1", "revision": 2, "current_revision": 5}
    plain = ErrorInfo.from_exception(ValueError("x"))
    assert (plain.code, plain.details) == (None, {})


def test_to_exception_rebuilds_the_chain() -> None:
    info = ErrorInfo.from_exception(_caught(_raise_with_cause))
    remote = info.to_exception()
    assert isinstance(remote, RemoteError)
    assert (remote.type, remote.info) == ("RuntimeError", info)
    assert str(remote) == "RuntimeError: charge failed"
    cause = remote.__cause__
    assert isinstance(cause, RemoteError)
    assert cause.type == "ValueError"
    assert cause.info == info.cause
    assert cause.__cause__ is None


def test_error_info_json_round_trip_keeps_causes() -> None:
    info = ErrorInfo.from_exception(_caught(_raise_with_cause))
    again = ErrorInfo.model_validate_json(info.model_dump_json())
    assert again == info
    assert [link.type for link in again.causes()] == ["RuntimeError", "ValueError"]


def test_describing_a_remote_error_keeps_its_identity() -> None:
    info = ErrorInfo.from_exception(_caught(_raise_with_cause))
    assert ErrorInfo.from_exception(info.to_exception()) == info
    assert ErrorInfo.from_exception(RemoteError(FAILURE)).type == "shop.PaymentError"
    wrapped = ErrorInfo.from_exception(_caught(_raise_remote_cause))
    assert [link.type for link in wrapped.causes()] == [
        "RuntimeError",
        "shop.PaymentError",
        "KeyError",
    ]
    assert wrapped.cause is not None
    assert wrapped.cause.retryable is False
