from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from aiki_core import ErrorInfo, OverlapPolicy, RetryPolicy, RunId, RunStatus, TaskStatus
from aiki_core.sdk import fit_trace_context
from aiki_core.wire import (
    AwaitChild,
    AwaitEvent,
    AwaitRetry,
    AwaitSleep,
    CancelRunRequest,
    ChildRecord,
    ClaimedRun,
    ClaimRequest,
    ClaimResponse,
    CompleteRun,
    CreateScheduleRequest,
    ErrorBody,
    ErrorCode,
    ErrorResponse,
    EventId,
    EventRecord,
    EventWaitRecord,
    FailRun,
    HeartbeatRequest,
    HeartbeatResponse,
    ListRunsQuery,
    Namespace,
    PoolName,
    RecordTaskRequest,
    RecordTaskResponse,
    ReleaseRun,
    RunDetail,
    RunDirective,
    RunLease,
    RunLeaseStatus,
    RunPage,
    RunSummary,
    Schedule,
    ScheduleId,
    SchedulePage,
    SendEventRequest,
    SendEventResponse,
    SleepRecord,
    StartRunRequest,
    StartRunResponse,
    StateTransition,
    SuspendRun,
    TaskAddress,
    TaskAttemptRecord,
    TaskId,
    TaskRecord,
    TransitionRunRequest,
    TransitionRunResponse,
    WorkerId,
    WorkflowCapability,
)

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
CEST = timezone(timedelta(hours=2))
RUN = RunId("01J0A8Z6Q3K4V5W6X7Y8Z9ABCD")
CHILD = RunId("01J0A8Z6Q3K4V5W6X7Y8Z9CHLD")
CHARGE = TaskAddress("charge:" + "ab" * 32)

ERROR = ErrorInfo(
    type="ValueError",
    message="card declined",
    stack='Traceback (most recent call last):\n  File "shop.py", line 3, in charge\n',
    retryable=True,
    cause=ErrorInfo(
        type="aiki_core.NotFoundError",
        message="customer 'c-9' not found",
        retryable=False,
        code="not_found",
        details={"resource": "customer", "resource_id": "c-9"},
    ),
)

SUMMARY = RunSummary(
    id=RUN,
    namespace=Namespace("default"),
    workflow="orders",
    version="1.0.0",
    status=RunStatus.RUNNING,
    pool=PoolName("default"),
    revision=3,
    attempt=1,
    reference_id="order-42",
    created_at=T0,
    updated_at=T0 + timedelta(seconds=2),
    deadline_at=T0 + timedelta(hours=1),
)

FINISHED = RunSummary(
    id=CHILD,
    namespace=Namespace("acme"),
    workflow="ship",
    version="2024-06-01",
    status=RunStatus.COMPLETED,
    pool=PoolName("gpu"),
    revision=1,
    attempt=2,
    parent_run_id=RUN,
    created_at=T0.astimezone(CEST),
    updated_at=T0 + timedelta(minutes=3),
    start_at=T0 + timedelta(seconds=30),
    finished_at=T0 + timedelta(minutes=3, milliseconds=250),
)

TASK = TaskRecord(
    id=TaskId("task-1"),
    name="charge",
    address=CHARGE,
    occurrence=0,
    status=TaskStatus.COMPLETED,
    input={"amount": 12.5, "currency": "EUR", "items": [1, 2, 3]},
    result={"charge_id": "ch_1", "ok": True},
    attempts=[
        TaskAttemptRecord(
            attempt=1,
            status=TaskStatus.AWAITING_RETRY,
            started_at=T0,
            finished_at=T0 + timedelta(milliseconds=120),
            error=ERROR,
        ),
        TaskAttemptRecord(attempt=2, status=TaskStatus.COMPLETED, started_at=T0),
    ],
    next_attempt_at=None,
    created_at=T0,
    finished_at=T0 + timedelta(seconds=1),
)

FAILED_TASK = TaskRecord(
    id=TaskId("task-2"),
    name="refund",
    address=TaskAddress("refund:" + "cd" * 32),
    occurrence=1,
    status=TaskStatus.FAILED,
    error=ERROR,
    created_at=T0,
)

SLEEP = SleepRecord(
    name="cooldown",
    occurrence=0,
    status="completed",
    wake_at=T0 + timedelta(minutes=5),
    completed_at=T0 + timedelta(minutes=5, milliseconds=3),
)
EVENT_WAIT = EventWaitRecord(
    name="payment.confirmed",
    occurrence=0,
    status="received",
    timeout_at=T0 + timedelta(days=1),
    event_id=EventId("ev-1"),
)
EVENT = EventRecord(
    id=EventId("ev-1"),
    name="payment.confirmed",
    reference_id="stripe-evt-1",
    data={"amount": 12.5, "tags": ["a", "b"], "note": None},
    received_at=T0 + timedelta(seconds=9),
    consumed=True,
)
CHILD_RECORD = ChildRecord(
    run_id=CHILD,
    workflow="ship",
    version="2024-06-01",
    address=TaskAddress("ship:" + "ef" * 32),
    occurrence=0,
    status=RunStatus.COMPLETED,
)
HISTORY = [
    StateTransition(
        seq=1,
        run_id=RUN,
        entity="run",
        entity_id=RUN,
        from_status=None,
        to_status="queued",
        revision=0,
        at=T0,
    ),
    StateTransition(
        seq=2,
        run_id=RUN,
        entity="task",
        entity_id="task-1",
        from_status="running",
        to_status="completed",
        reason="attempt 2 returned",
        revision=3,
        at=T0 + timedelta(seconds=1),
    ),
]

DETAIL = RunDetail(
    **SUMMARY.model_dump(),
    input={"order_id": 42, "lines": [{"sku": "A-1", "qty": 2}]},
    result=None,
    error=None,
    tasks=[TASK, FAILED_TASK],
    sleeps=[SLEEP],
    event_waits=[EVENT_WAIT],
    events=[EVENT],
    children=[CHILD_RECORD],
    history=HISTORY,
    pending_reason="no worker serves orders 1.0.0",
)

CAPABILITY = WorkflowCapability(workflow="orders", version="1.0.0", pool=PoolName("gpu"))

SCHEDULE = Schedule(
    id=ScheduleId("sch-1"),
    namespace=Namespace("default"),
    name="nightly-report",
    workflow="report",
    version="3",
    input={"format": "pdf"},
    cron="0 3 * * *",
    timezone="Europe/Paris",
    overlap=OverlapPolicy.SKIP,
    pool=PoolName("default"),
    timeout=timedelta(hours=2),
    paused=False,
    next_fire_at=T0 + timedelta(hours=15),
    last_run_id=RUN,
    created_at=T0,
    updated_at=T0,
)
EVERY_SCHEDULE = Schedule(
    id=ScheduleId("sch-2"),
    namespace=Namespace("default"),
    name="poll",
    workflow="poll",
    version="1",
    every=timedelta(minutes=5),
    timezone="UTC",
    overlap=OverlapPolicy.CANCEL_PREVIOUS,
    pool=PoolName("default"),
    paused=True,
    created_at=T0,
    updated_at=T0,
)

EXPONENTIAL = RetryPolicy.exponential(
    max_attempts=5, base_delay=timedelta(milliseconds=250), max_delay=timedelta(seconds=30)
)

REQUESTS: list[BaseModel] = [
    StartRunRequest(workflow="orders", version="1.0.0"),
    StartRunRequest(
        workflow="orders",
        version="1.0.0",
        input={"order_id": 42, "price": 9.99, "gift": False, "tags": ["x"], "note": None},
        reference_id="order-42",
        start_at=datetime(2024, 6, 1, 14, 0, tzinfo=CEST),
        pool=PoolName("eu-west/gpu"),
        timeout=timedelta(hours=2),
    ),
    StartRunRequest(workflow="orders", version="1.0.0", input=[1, "two"], delay=timedelta(1.5)),
    ListRunsQuery(),
    ListRunsQuery(
        workflow="orders",
        version="1.0.0",
        status=[RunStatus.RUNNING, RunStatus.AWAITING_EVENT],
        created_after=T0,
        created_before=T0 + timedelta(days=1),
        limit=500,
        cursor="1800000000000-01J0",
    ),
    CancelRunRequest(),
    CancelRunRequest(reason="customer asked"),
    SendEventRequest(name="payment.confirmed", data={"amount": 12.5}, reference_id="evt-1"),
    CAPABILITY,
    ClaimRequest(
        worker_id="worker-1",
        capabilities=[CAPABILITY, WorkflowCapability(workflow="ship", version="2")],
        max_runs=8,
        wait=timedelta(seconds=20),
    ),
    RunLease(run_id=RUN, revision=3),
    HeartbeatRequest(worker_id="worker-1", runs=[RunLease(run_id=RUN, revision=3)]),
    RecordTaskRequest(
        revision=3,
        name="charge",
        address=CHARGE,
        occurrence=0,
        attempt=1,
        status=TaskStatus.RUNNING,
        input={"amount": 12.5},
        retry=EXPONENTIAL,
        worker_id=WorkerId("worker-1"),
    ),
    RecordTaskRequest(
        revision=3,
        name="charge",
        address=CHARGE,
        occurrence=0,
        attempt=2,
        status=TaskStatus.COMPLETED,
        result={"charge_id": "ch_1"},
    ),
    RecordTaskRequest(
        revision=3,
        name="charge",
        address=CHARGE,
        occurrence=0,
        attempt=1,
        status=TaskStatus.AWAITING_RETRY,
        error=ERROR,
        retry_at=T0 + timedelta(minutes=10),
    ),
    RecordTaskRequest(
        revision=3,
        name="charge",
        address=CHARGE,
        occurrence=0,
        attempt=5,
        status=TaskStatus.FAILED,
        error=ERROR,
    ),
    TransitionRunRequest(revision=3, action=CompleteRun(result={"shipped": True})),
    TransitionRunRequest(revision=3, action=CompleteRun()),
    TransitionRunRequest(revision=3, action=FailRun(error=ERROR)),
    TransitionRunRequest(
        revision=3, action=FailRun(error=ERROR, retry_at=T0 + timedelta(minutes=1))
    ),
    TransitionRunRequest(
        revision=3,
        action=SuspendRun(waits=[AwaitSleep(name="cooldown", occurrence=0, wake_at=T0)]),
    ),
    TransitionRunRequest(
        revision=3,
        action=SuspendRun(
            waits=[
                AwaitEvent(name="payment.confirmed", occurrence=1, timeout_at=T0),
                AwaitEvent(name="payment.cancelled", occurrence=0),
            ]
        ),
    ),
    TransitionRunRequest(revision=3, action=SuspendRun(waits=[AwaitChild(child_run_id=CHILD)])),
    TransitionRunRequest(revision=3, action=SuspendRun(waits=[AwaitRetry(retry_at=T0)])),
    TransitionRunRequest(revision=4, action=ReleaseRun()),
    CreateScheduleRequest(
        name="nightly-report",
        workflow="report",
        version="3",
        input={"format": "pdf"},
        cron="0 3 * * *",
        timezone="Europe/Paris",
        overlap=OverlapPolicy.ALLOW,
        timeout=timedelta(hours=2),
    ),
    CreateScheduleRequest(name="poll", workflow="poll", version="1", every=timedelta(minutes=5)),
    RetryPolicy.never(),
    RetryPolicy.fixed(max_attempts=3, delay=timedelta(seconds=2)),
    EXPONENTIAL,
]

RESPONSES: list[BaseModel] = [
    SUMMARY,
    FINISHED,
    DETAIL,
    RunDetail(**FINISHED.model_dump(), result={"tracking": "1Z999"}),
    RunDetail(**SUMMARY.model_dump(exclude={"status"}), status=RunStatus.FAILED, error=ERROR),
    TASK,
    FAILED_TASK,
    SLEEP,
    EVENT_WAIT,
    EVENT,
    CHILD_RECORD,
    *HISTORY,
    StartRunResponse(run=SUMMARY, created=True),
    RunPage(runs=[SUMMARY, FINISHED], next_cursor="1800000000000-01J0"),
    RunPage(runs=[]),
    SendEventResponse(event_id=EventId("ev-1"), duplicate=False),
    ClaimedRun(
        run=SUMMARY,
        input={"order_id": 42},
        tasks=[TASK],
        sleeps=[SLEEP],
        event_waits=[EVENT_WAIT],
        events=[EVENT],
        children=[CHILD_RECORD],
    ),
    ClaimResponse(runs=[ClaimedRun(run=SUMMARY)]),
    ClaimResponse(runs=[]),
    HeartbeatResponse(
        runs=[
            RunLeaseStatus(run_id=RUN, directive=RunDirective.CONTINUE),
            RunLeaseStatus(run_id=CHILD, directive=RunDirective.LOST),
        ]
    ),
    RecordTaskResponse(task_id=TaskId("task-1"), status=TaskStatus.COMPLETED),
    TransitionRunResponse(run=FINISHED),
    SCHEDULE,
    EVERY_SCHEDULE,
    SchedulePage(schedules=[SCHEDULE, EVERY_SCHEDULE], next_cursor="next"),
    ErrorResponse(
        error=ErrorBody(
            code=ErrorCode.NOT_FOUND,
            message="run 'x' not found",
            details={"resource": "run", "resource_id": "x"},
        )
    ),
    ErrorResponse(error=ErrorBody(code="rate_limited", message="slow down")),
    ERROR,
]


def _id(model: BaseModel) -> str:
    return type(model).__name__


@pytest.mark.parametrize("sample", [*REQUESTS, *RESPONSES], ids=_id)
def test_json_round_trip(sample: BaseModel) -> None:
    text = sample.model_dump_json()
    again = type(sample).model_validate_json(text)
    assert again == sample
    # JSON -> model -> JSON gives the same document
    assert json.loads(again.model_dump_json()) == json.loads(text)


@pytest.mark.parametrize("sample", REQUESTS, ids=_id)
def test_request_rejects_unknown_field(sample: BaseModel) -> None:
    data = {**sample.model_dump(mode="json"), "surprise": 1}
    with pytest.raises(ValidationError) as info:
        type(sample).model_validate(data)
    assert [error["type"] for error in info.value.errors()] == ["extra_forbidden"]


@pytest.mark.parametrize("sample", RESPONSES, ids=_id)
def test_response_ignores_unknown_field(sample: BaseModel) -> None:
    data = {**sample.model_dump(mode="json"), "added_by_a_newer_server": {"x": 1}}
    parsed = type(sample).model_validate(data)
    assert parsed == sample
    assert "added_by_a_newer_server" not in parsed.model_dump()


def test_nested_request_rejects_unknown_field() -> None:
    data: dict[str, Any] = {"revision": 1, "action": {"kind": "release", "force": True}}
    with pytest.raises(ValidationError):
        TransitionRunRequest.model_validate(data)


def test_transition_action_is_picked_by_kind() -> None:
    text = json.dumps(
        {
            "revision": 2,
            "action": {
                "kind": "suspend",
                "waits": [
                    {"kind": "child", "child_run_id": "r2"},
                    {"kind": "retry", "retry_at": "2024-06-01T12:00:00Z"},
                ],
            },
        }
    )
    request = TransitionRunRequest.model_validate_json(text)
    assert isinstance(request.action, SuspendRun)
    child, retry = request.action.waits
    assert isinstance(child, AwaitChild)
    assert child.child_run_id == "r2"
    assert isinstance(retry, AwaitRetry)
    assert retry.retry_at == T0
    with pytest.raises(ValidationError):
        TransitionRunRequest.model_validate({"revision": 2, "action": {"kind": "explode"}})


def test_durations_serialize_as_integer_milliseconds() -> None:
    request = StartRunRequest(
        workflow="w", version="1", delay=timedelta(seconds=1.5), timeout=timedelta(minutes=5)
    )
    data = json.loads(request.model_dump_json())
    assert data["delay"] == 1500
    assert data["timeout"] == 300_000
    assert isinstance(data["delay"], int)
    # Python mode keeps the timedelta
    assert request.model_dump()["delay"] == timedelta(milliseconds=1500)

    claim = json.loads(ClaimRequest(worker_id="w", capabilities=[CAPABILITY]).model_dump_json())
    assert claim["wait"] == 30_000
    assert json.loads(EVERY_SCHEDULE.model_dump_json())["every"] == 300_000
    policy = json.loads(EXPONENTIAL.model_dump_json())
    assert (policy["base_delay"], policy["max_delay"]) == (250, 30_000)


def test_durations_parse_from_integer_milliseconds() -> None:
    text = '{"workflow": "w", "version": "1", "delay": 2500}'
    assert StartRunRequest.model_validate_json(text).delay == timedelta(milliseconds=2500)


def test_start_run_rejects_start_at_with_delay() -> None:
    with pytest.raises(ValidationError, match="start_at or delay"):
        StartRunRequest(workflow="w", version="1", start_at=T0, delay=timedelta(seconds=1))


def test_start_run_requires_an_aware_start_at() -> None:
    with pytest.raises(ValidationError):
        StartRunRequest(workflow="w", version="1", start_at=datetime(2024, 6, 1, 12, 0))


def _record(**fields: Any) -> RecordTaskRequest:
    base: dict[str, Any] = {
        "revision": 1,
        "name": "charge",
        "address": CHARGE,
        "occurrence": 0,
        "attempt": 1,
    }
    return RecordTaskRequest.model_validate({**base, **fields})


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"status": "failed"}, id="failed-without-error"),
        pytest.param({"status": "awaiting_retry", "retry_at": T0}, id="awaiting-without-error"),
        pytest.param({"status": "completed", "error": ERROR}, id="completed-with-error"),
        pytest.param({"status": "running", "error": ERROR}, id="running-with-error"),
        pytest.param({"status": "awaiting_retry", "error": ERROR}, id="awaiting-without-retry-at"),
        pytest.param({"status": "failed", "error": ERROR, "retry_at": T0}, id="failed-retry-at"),
        pytest.param({"status": "running", "result": 1}, id="running-with-result"),
        pytest.param({"status": "failed", "error": ERROR, "result": 1}, id="failed-with-result"),
        pytest.param({"status": "completed", "attempt": 0}, id="attempt-zero"),
    ],
)
def test_record_task_rejects_inconsistent_fields(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _record(**fields)


def test_record_task_accepts_consistent_fields() -> None:
    assert _record(status="completed", result={"ok": True}).result == {"ok": True}
    assert _record(status="failed", error=ERROR).error == ERROR
    assert _record(status="awaiting_retry", error=ERROR, retry_at=T0).retry_at == T0


def test_record_task_response_is_terminal() -> None:
    assert RecordTaskResponse(task_id=TaskId("t"), status=TaskStatus.COMPLETED).is_terminal
    assert RecordTaskResponse(task_id=TaskId("t"), status=TaskStatus.FAILED).is_terminal
    assert not RecordTaskResponse(task_id=TaskId("t"), status=TaskStatus.RUNNING).is_terminal


def _schedule(**fields: Any) -> CreateScheduleRequest:
    return CreateScheduleRequest.model_validate(
        {"name": "s", "workflow": "w", "version": "1", **fields}
    )


def test_schedule_needs_exactly_one_cadence() -> None:
    with pytest.raises(ValidationError, match="exactly one of cron and every"):
        _schedule()
    with pytest.raises(ValidationError, match="exactly one of cron and every"):
        _schedule(cron="* * * * *", every=timedelta(minutes=1))
    assert _schedule(cron="* * * * *").every is None
    assert _schedule(every=timedelta(minutes=1)).cron is None


@pytest.mark.parametrize("zone", ["Mars/Olympus", "utc", "../etc/passwd", "America", ""])
def test_schedule_rejects_unknown_timezone(zone: str) -> None:
    with pytest.raises(ValidationError):
        _schedule(cron="* * * * *", timezone=zone)


def test_schedule_interval_is_at_least_a_second() -> None:
    with pytest.raises(ValidationError, match="at least 1000 ms"):
        _schedule(every=timedelta(milliseconds=999))
    with pytest.raises(ValidationError, match="at least 1000 ms"):
        _schedule(every=0)
    assert _schedule(every=1000).every == timedelta(seconds=1)


def test_claim_wait_is_bounded() -> None:
    with pytest.raises(ValidationError, match="at most 60000 ms"):
        ClaimRequest(worker_id="w", capabilities=[CAPABILITY], wait=timedelta(seconds=61))
    with pytest.raises(ValidationError, match="at most 60000 ms"):
        ClaimRequest(worker_id="w", capabilities=[CAPABILITY], wait=60_001)
    at_limit = ClaimRequest(worker_id="w", capabilities=[CAPABILITY], wait=timedelta(seconds=60))
    assert at_limit.wait == timedelta(seconds=60)


def test_claim_needs_a_capability() -> None:
    with pytest.raises(ValidationError):
        ClaimRequest(worker_id="w", capabilities=[])


@pytest.mark.parametrize("name", ["my workflow", " orders", "orders ", "", "-orders", "a\tb"])
def test_names_are_rejected(name: str) -> None:
    with pytest.raises(ValidationError):
        StartRunRequest(workflow=name, version="1")
    with pytest.raises(ValidationError):
        SendEventRequest(name=name)
    with pytest.raises(ValidationError):
        WorkflowCapability(workflow="w", version="1", pool=PoolName(name))
    with pytest.raises(ValidationError):
        _schedule(name=name, cron="* * * * *")


@pytest.mark.parametrize("name", ["orders", "Orders_v2", "billing.charge", "eu-west/gpu:1", "7"])
def test_names_are_accepted(name: str) -> None:
    assert StartRunRequest(workflow=name, version="1").workflow == name
    assert SendEventRequest(name=name).name == name


def test_version_with_space_is_rejected() -> None:
    with pytest.raises(ValidationError):
        StartRunRequest(workflow="w", version="1.0 beta")


def test_models_are_frozen() -> None:
    with pytest.raises(ValidationError):
        SUMMARY.revision = 4  # type: ignore[misc]
    with pytest.raises(ValidationError):
        CAPABILITY.pool = PoolName("other")  # type: ignore[misc]


JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=25,
)


@given(JSON_VALUES)
def test_start_run_input_survives_json(value: Any) -> None:
    request = StartRunRequest(workflow="w", version="1", input=value)
    again = StartRunRequest.model_validate_json(request.model_dump_json())
    assert again.input == value
    assert again == request


def test_a_trace_carrier_is_trimmed_to_what_the_wire_holds() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    carrier = {
        "baggage": "k=" + "v" * 5000,  # too long: left out
        "X-Upper": "1",  # a name the wire refuses
        "odd": "caf\u00e9",  # not visible ASCII
        **{f"extra-{i}": str(i) for i in range(10)},
        "tracestate": "vendor=1",
        "traceparent": parent,
    }
    fitted = fit_trace_context(carrier)
    assert fitted is not None
    # W3C's entries first, then the others in their order, eight in all
    assert list(fitted) == ["traceparent", "tracestate", *(f"extra-{i}" for i in range(6))]
    assert fitted["traceparent"] == parent
    # what is left passes the wire's own validation
    assert StartRunRequest(workflow="w", version="1", trace_context=fitted).trace_context == fitted
    assert fit_trace_context({"baggage": "x" * 2000}) is None
    assert fit_trace_context({}) is None
