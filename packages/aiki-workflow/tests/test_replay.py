"""Content-addressed replay and run outcomes, against an in-memory execution."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import aiki_task._remote
from aiki_core import (
    AikiError,
    ConsoleLogger,
    ErrorInfo,
    IdentityCodec,
    Interceptor,
    LogLevel,
    RetryPolicy,
    RunInterrupt,
    ServerUnavailableError,
    StaleRevisionError,
    TaskFailedError,
    TaskStatus,
    WorkflowCancelledError,
    WorkflowTimeoutError,
)
from aiki_core.wire import (
    AcquireRateLimitResponse,
    AwaitEvent,
    AwaitRetry,
    AwaitTask,
    ClaimedRun,
    CompleteRun,
    CreateWebhookRequest,
    CreateWebhookResponse,
    EventRecord,
    EventWaitRecord,
    FailRun,
    PushedTaskAnswer,
    RateLimitUse,
    RecordTaskRequest,
    RecordTaskResponse,
    RemoteTaskRequest,
    RunSummary,
    StartChildRequest,
    StartRunResponse,
    SuspendRun,
    TaskId,
    TaskRecord,
    task_address,
)
from aiki_task import task
from aiki_workflow import WorkflowRun, event, workflow

if TYPE_CHECKING:
    from collections.abc import Callable

NOW = datetime(2030, 1, 1, tzinfo=UTC)
calls: list[str] = []


class Execution:
    """A claimed run whose task records are kept in memory."""

    def __init__(
        self,
        payload: Any,
        tasks: list[TaskRecord] | None = None,
        cleanup: ErrorInfo | None = None,
    ) -> None:
        self.claim = ClaimedRun(
            run=RunSummary(
                id="run-1",
                namespace="default",
                workflow="wf",
                version="1",
                status="running",
                pool="default",
                revision=1,
                attempt=1,
                created_at=NOW,
                updated_at=NOW,
            ),
            input=payload,
            tasks=tasks or [],
            cleanup=cleanup,
        )
        self.log = ConsoleLogger(LogLevel.ERROR)
        self.codec = IdentityCodec()
        self.create_context: Callable[[ClaimedRun], object] | None = None
        self.pause_requested = False
        self.interceptors: tuple[Interceptor, ...] = ()
        self.records: list[RecordTaskRequest] = []
        """Written to the server, in order."""
        self.deferred: list[RecordTaskRequest] = []
        """Held for the run's transition."""
        self.refuse_writes: AikiError | None = None
        self.remote_answers: list[PushedTaskAnswer | AikiError | object] = []
        """What the server answers each remote task call, in turn."""
        self.remote_calls: list[RemoteTaskRequest] = []

    async def record_task(self, request: RecordTaskRequest) -> RecordTaskResponse:
        if self.refuse_writes is not None:
            raise self.refuse_writes
        self.records.append(request)
        return RecordTaskResponse(task_id=TaskId(f"t{len(self.records)}"), status=request.status)

    def defer_task(self, request: RecordTaskRequest) -> None:
        self.deferred.append(request)

    async def start_child(self, request: StartChildRequest) -> StartRunResponse:
        raise AssertionError(f"no children in these workflows: {request}")

    async def create_webhook(self, request: CreateWebhookRequest) -> CreateWebhookResponse:
        raise AssertionError(f"no webhooks in these workflows: {request}")

    async def acquire_rate_limit(self, use: RateLimitUse) -> AcquireRateLimitResponse:
        raise AssertionError(f"no rate limit is asked on replay: {use}")

    async def call_remote_task(self, request: RemoteTaskRequest) -> PushedTaskAnswer:
        self.remote_calls.append(request)
        answer = self.remote_answers.pop(0)
        if answer is HANGS:
            await anyio.sleep_forever()
        if isinstance(answer, AikiError):
            raise answer
        assert isinstance(answer, PushedTaskAnswer)
        return answer

    async def flush_tasks(self) -> None:
        held, self.deferred = self.deferred, []
        for request in held:
            await self.record_task(request)

    def task_abandoned(
        self, task_name: str, attempt: int, still_running: Callable[[], bool]
    ) -> None:
        raise AssertionError(f"no plain task is cancelled in these workflows: {task_name}")


HANGS = object()
"""A remote answer that never comes."""


def recorded(name: str, value: Any, result: Any, occurrence: int = 0, **extra: Any) -> TaskRecord:
    fields: dict[str, Any] = {
        "id": f"{name}-{occurrence}",
        "name": name,
        "address": task_address(name, value),
        "occurrence": occurrence,
        "input": value,
        "status": TaskStatus.COMPLETED,
        "result": result,
        "created_at": NOW,
    }
    return TaskRecord.model_validate(fields | extra)


@task("double")
async def double(n: int) -> int:
    calls.append(f"double({n})")
    return 2 * n


flaky_failures: list[int] = []


@task("flaky", retry=RetryPolicy.fixed(max_attempts=3, delay=timedelta(milliseconds=1)))
async def flaky(n: int) -> int:
    calls.append(f"flaky({n})")
    if len(flaky_failures) < 2:
        flaky_failures.append(n)
        raise ConnectionError("try again")
    return n


@task("patient", retry=RetryPolicy.fixed(max_attempts=3, delay=timedelta(hours=1)))
async def patient(n: int) -> int:
    raise ConnectionError("down for an hour")


wf = workflow("wf")


@wf.v("1")
async def sum_of_doubles(run: WorkflowRun, numbers: list[int]) -> int:
    return sum([await double.start(run, n) for n in numbers])


@wf.v("2")
async def with_flaky(run: WorkflowRun, n: int) -> int:
    return await flaky.start(run, n)


@wf.v("3")
async def with_patient(run: WorkflowRun, n: int) -> int:
    return await patient.start(run, n)


@wf.v("4")
async def fails(run: WorkflowRun, n: int) -> int:
    orders: dict[str, int] = {}
    try:
        orders["missing"]
    except KeyError as exc:
        raise ValueError("no such order") from exc
    return n


remote_double = double.with_options(
    retry=RetryPolicy.fixed(max_attempts=3, delay=timedelta(milliseconds=1))
).remote()


@wf.v("remote")
async def with_remote(run: WorkflowRun, n: int) -> int:
    return await remote_double.start(run, n)


@wf.v("cleans-up")
async def cleans_up(run: WorkflowRun, n: int) -> int:
    try:
        return await double.start(run, n)
    finally:
        await double.start(run, n + 1)  # cleanup code: runs as usual
        await run.sleep("rest", timedelta(hours=1))  # a cleanup cannot wait


CANCELLED = ErrorInfo.from_exception(WorkflowCancelledError("run-1", "enough"))


@task("note-cancel")
async def note_cancel(error: ErrorInfo) -> None:
    calls.append(f"on_cancel({error.code})")


@task("note-after")
async def note_after(n: int) -> None:
    calls.append(f"after({n})")


@wf.v("hooked", on_cancel=note_cancel, after=[note_after])
async def hooked(run: WorkflowRun, n: int) -> int:
    return await double.start(run, n)


@wf.v("hooked-before", before=[note_after], on_cancel=note_cancel)
async def hooked_before(run: WorkflowRun, n: int) -> int:
    return await double.start(run, n)


def failed_answer(error_type: str, *, retryable: bool) -> PushedTaskAnswer:
    error = ErrorInfo(type=error_type, message="it broke", retryable=retryable)
    return PushedTaskAnswer(status="failed", error=error)


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    flaky_failures.clear()


async def test_a_first_execution_runs_and_records_each_call() -> None:
    execution = Execution([1, 2, 1])
    action = await sum_of_doubles.execute(execution)
    assert action == CompleteRun(result=8)
    assert calls == ["double(1)", "double(2)", "double(1)"]
    keys = [(r.address, r.occurrence, r.status) for r in execution.records]
    one, two = task_address("double", 1), task_address("double", 2)
    # each result is written before the next task runs; the last goes with the transition
    assert keys == [(one, 0, TaskStatus.COMPLETED), (two, 0, TaskStatus.COMPLETED)]
    assert [(r.address, r.occurrence, r.status) for r in execution.deferred] == [
        (one, 1, TaskStatus.COMPLETED)
    ]


async def test_a_refused_write_abandons_the_run_before_the_next_task() -> None:
    execution = Execution([1, 2])
    execution.refuse_writes = StaleRevisionError("run-1", 1, 2)
    with pytest.raises(RunInterrupt):
        await sum_of_doubles.execute(execution)
    # the first result could not be written, so the second task never ran
    assert calls == ["double(1)"]


async def test_a_remote_task_is_pushed_attempt_by_attempt_under_its_retry_policy() -> None:
    execution = Execution(7)
    execution.remote_answers = [
        failed_answer("ConnectionError", retryable=True),
        PushedTaskAnswer(status="completed", result=14),
    ]
    action = await with_remote.execute(execution)
    assert action == CompleteRun(result=14)
    assert calls == []  # the function ran elsewhere
    address = task_address("double", 7)
    assert [(c.name, c.address, c.attempt, c.input) for c in execution.remote_calls] == [
        ("double", address, 1, 7),
        ("double", address, 2, 7),
    ]
    records = [*execution.records, *execution.deferred]
    assert [(r.attempt, r.status) for r in records] == [
        (1, TaskStatus.AWAITING_RETRY),
        (2, TaskStatus.COMPLETED),
    ]
    assert records[0].error is not None and records[0].error.type == "ConnectionError"


async def test_a_remote_task_that_cannot_be_reached_or_is_final_fails_as_the_answer_says() -> None:
    execution = Execution(7)
    execution.remote_answers = [
        ServerUnavailableError("cannot reach the server"),
        failed_answer("aiki_core.PayloadValidationError", retryable=False),
    ]
    action = await with_remote.execute(execution)
    assert isinstance(action, FailRun)
    assert len(execution.remote_calls) == 2  # the second answer was final
    assert [r.status for r in execution.records] == [
        TaskStatus.AWAITING_RETRY,
        TaskStatus.FAILED,
    ]


async def test_a_remote_call_on_a_lost_claim_abandons_the_run() -> None:
    execution = Execution(7)
    execution.remote_answers = [StaleRevisionError("run-1", 1, 2)]
    with pytest.raises(RunInterrupt):
        await with_remote.execute(execution)
    assert execution.records == []


async def test_a_remote_result_of_the_wrong_type_fails_its_attempt_and_is_not_recorded() -> None:
    # before, the answer was recorded as the call's completed result and only `start`
    # checked its type: the run failed, and every later attempt of it replayed the
    # same bad result from the record without calling the service again
    execution = Execution(7)
    execution.remote_answers = [PushedTaskAnswer(status="completed", result="fourteen")]
    action = await with_remote.execute(execution)
    assert isinstance(action, FailRun)
    records = [*execution.records, *execution.deferred]
    assert [r.status for r in records] == [TaskStatus.FAILED]
    assert records[0].result is None
    assert records[0].error is not None and "wrong type" in records[0].error.message


remote_hasty = double.with_options(timeout=timedelta(milliseconds=50)).remote()


@wf.v("remote-hasty")
async def with_hasty_remote(run: WorkflowRun, n: int) -> int:
    return await remote_hasty.start(run, n)


async def test_a_remote_attempt_whose_answer_never_comes_times_out_on_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the server answers an attempt within its timeout and a margin; a server that
    # never answers left the attempt waiting for the HTTP client's 75 s instead
    monkeypatch.setattr(aiki_task._remote, "ANSWER_MARGIN", 0.05)
    execution = Execution(7)
    execution.remote_answers = [HANGS]
    with anyio.fail_after(5):
        action = await with_hasty_remote.execute(execution)
    assert isinstance(action, FailRun)
    records = [*execution.records, *execution.deferred]
    assert records[0].error is not None
    assert records[0].error.code == "task_timeout"


async def test_a_pending_remote_attempt_suspends_the_run_on_it() -> None:
    execution = Execution(7)
    execution.remote_answers = [PushedTaskAnswer(status="pending")]
    action = await with_remote.execute(execution)
    address = task_address("double", 7)
    assert action == SuspendRun(waits=[AwaitTask(address=address, occurrence=0)])
    (call,) = execution.remote_calls
    # the server records the outcome by the policy the call sent, counted as it counts
    assert (call.retry, call.retry_attempt) == (remote_double.retry, 1)
    assert [*execution.records, *execution.deferred] == []  # the server records it


async def test_a_remote_attempt_the_server_runs_on_is_awaited_again_on_replay() -> None:
    running = recorded("double", 7, None, status=TaskStatus.RUNNING)
    execution = Execution(7, [running])
    action = await with_remote.execute(execution)
    assert action == SuspendRun(waits=[AwaitTask(address=running.address, occurrence=0)])
    assert execution.remote_calls == []


async def test_a_remote_result_on_record_is_replayed_without_a_call() -> None:
    execution = Execution(7, [recorded("double", 7, 14)])
    assert await with_remote.execute(execution) == CompleteRun(result=14)
    assert execution.remote_calls == []


async def test_replay_takes_recorded_results_by_content_and_occurrence() -> None:
    tasks = [recorded("double", 1, 100), recorded("double", 1, 300, occurrence=1)]
    execution = Execution([1, 2, 1], tasks)
    action = await sum_of_doubles.execute(execution)
    # the two calls with input 1 took their recorded results in order; only 2 ran
    assert action == CompleteRun(result=100 + 4 + 300)
    assert calls == ["double(2)"]


async def test_reordered_calls_still_find_their_results() -> None:
    tasks = [recorded("double", 2, 40), recorded("double", 1, 10)]
    action = await sum_of_doubles.execute(Execution([1, 2], tasks))
    assert action == CompleteRun(result=50)
    assert calls == []


async def test_a_changed_input_simply_runs_the_task() -> None:
    action = await sum_of_doubles.execute(Execution([3], [recorded("double", 1, 10)]))
    assert action == CompleteRun(result=6)
    assert calls == ["double(3)"]


async def test_short_back_offs_retry_in_process_and_record_each_attempt() -> None:
    execution = Execution(7)
    action = await with_flaky.execute(execution)
    assert action == CompleteRun(result=7)
    assert [(r.attempt, r.status) for r in [*execution.records, *execution.deferred]] == [
        (1, TaskStatus.AWAITING_RETRY),
        (2, TaskStatus.AWAITING_RETRY),
        (3, TaskStatus.COMPLETED),
    ]
    assert execution.records[0].error is not None
    assert execution.records[0].error.type == "ConnectionError"


async def test_a_long_back_off_suspends_the_run() -> None:
    execution = Execution(1)
    action = await with_patient.execute(execution)
    assert isinstance(action, SuspendRun)
    (wait,) = action.waits
    (record,) = execution.records
    assert record.status is TaskStatus.AWAITING_RETRY
    # the back-off goes to the server, whose clock sets the next attempt's due time
    assert (record.retry_delay, record.retry_at) == (timedelta(hours=1), None)
    assert wait == AwaitRetry(address=record.address, occurrence=record.occurrence)


async def test_a_failed_record_fails_the_call_again_on_replay() -> None:
    failed = recorded(
        "double",
        1,
        None,
        status=TaskStatus.FAILED,
        error={"type": "RuntimeError", "message": "card declined", "retryable": False},
    )
    action = await sum_of_doubles.execute(Execution([1], [failed]))
    assert isinstance(action, FailRun)
    assert action.error.type == "aiki_core.TaskFailedError"
    assert action.error.cause is not None
    assert action.error.cause.message.endswith("card declined")
    assert calls == []


async def test_a_failing_workflow_reports_its_error_with_the_cause() -> None:
    action = await fails.execute(Execution(1))
    assert isinstance(action, FailRun)
    assert action.error.type == "ValueError"
    assert action.error.cause is not None
    assert action.error.cause.type == "KeyError"
    assert action.retry_at is None


async def test_an_input_the_version_rejects_fails_the_run() -> None:
    action = await sum_of_doubles.execute(Execution("not a list"))
    assert isinstance(action, FailRun)
    assert action.error.code == "payload_validation"
    assert not action.error.retryable


def test_a_task_failure_is_not_an_exception_the_workflow_can_confuse() -> None:
    assert issubclass(TaskFailedError, Exception)
    assert wf.versions["1"] is sum_of_doubles
    with pytest.raises(ValueError, match="already has version"):
        wf.v("1")(sum_of_doubles.fn)


@wf.v("5")
async def naps_badly(run: WorkflowRun, n: int) -> int:
    await run.sleep("not a name", timedelta(seconds=n))
    return n


async def test_a_sleep_name_the_api_refuses_fails_the_run_saying_so() -> None:
    action = await naps_badly.execute(Execution(1))
    assert isinstance(action, FailRun)
    assert action.error.type == "aiki_core.PayloadValidationError"
    assert "invalid sleep 'not a name': name:" in action.error.message


@wf.v("6", strict_replay=True)
async def strict_doubles(run: WorkflowRun, values: list[int]) -> int:
    return sum([await double.start(run, v) for v in values])


async def test_strict_replay_refuses_a_new_call_while_history_is_unused() -> None:
    # the history holds double(1) then double(2); the code now calls double(3) first
    tasks = [recorded("double", 1, 2), recorded("double", 2, 4)]
    action = await strict_doubles.execute(Execution([3, 1, 2], tasks))
    assert isinstance(action, FailRun)
    assert action.error.type == "aiki_core.ReplayDivergenceError"
    assert "it calls double(3)" in action.error.message
    assert "double(1) #0" in action.error.message
    assert "double(2) #0" in action.error.message
    assert calls == []  # the new task did not run


async def test_strict_replay_allows_reordered_history_and_new_calls_after_it() -> None:
    tasks = [recorded("double", 1, 2), recorded("double", 2, 4)]
    action = await strict_doubles.execute(Execution([2, 1, 5], tasks))
    assert action == CompleteRun(result=4 + 2 + 10)
    assert calls == ["double(5)"]


async def test_a_new_call_while_calls_of_its_task_stay_unused_carries_a_notice() -> None:
    # the history holds double(1); the code now calls double(3) (a changed input)
    execution = Execution([3], [recorded("double", 1, 2)])

    assert await sum_of_doubles.execute(execution) == CompleteRun(result=6)
    assert calls == ["double(3)"]  # it ran, as content addressing says
    (sent,) = execution.records + execution.deferred
    assert sent.notice is not None
    assert "task 'double' was called with input 3" in sent.notice
    assert "1 recorded call(s) of it stayed unused (#0 1)" in sent.notice


async def test_new_calls_once_the_history_is_used_up_carry_no_notice() -> None:
    execution = Execution([1, 5], [recorded("double", 1, 2)])

    assert await sum_of_doubles.execute(execution) == CompleteRun(result=2 + 10)
    assert [r.notice for r in execution.records + execution.deferred] == [None]  # double(5)


kid = workflow("kid")


@kid.v("1")
async def kid_v1(run: WorkflowRun, n: int) -> int:
    return n


ping = event("ping", int)


@wf.v("7")
async def listens_and_spawns(run: WorkflowRun, n: int) -> int:
    got: list[int] = []

    async def listen() -> None:
        await ping.wait(run)

    async def spawn() -> None:
        child = await kid_v1.start_child(run, n)
        got.append(await child.result())

    async with anyio.create_task_group() as tg:
        tg.start_soon(listen)
        tg.start_soon(spawn)
    return got[0]


class SlowToStartChildren(Execution):
    """Starting a child takes a while, as a request to the server does."""

    def __init__(self, payload: Any) -> None:
        super().__init__(payload)
        self.children: list[StartChildRequest] = []

    async def start_child(self, request: StartChildRequest) -> StartRunResponse:
        await anyio.sleep(0.02)
        self.children.append(request)
        child = self.claim.run.model_copy(update={"id": "kidrun", "workflow": "kid"})
        return StartRunResponse(run=child, created=True)


async def test_a_child_start_in_flight_holds_off_the_suspension() -> None:
    # one branch waits at once; the run must not suspend while the other starts a child
    execution = SlowToStartChildren(5)
    action = await listens_and_spawns.execute(execution)
    assert isinstance(action, SuspendRun)
    assert sorted(wait.kind for wait in action.waits) == ["child", "event"]
    assert [request.workflow for request in execution.children] == ["kid"]


approved = event("approved", str)
rejected = event("rejected", str)


@wf.v("8")
async def decides(run: WorkflowRun, n: int) -> str:
    """Race `approved` against `rejected`; once rejected, wait for an approval again."""
    won: list[str] = []

    async def on(verdict: Any) -> None:
        got = await verdict.wait(run)
        won.append(f"{verdict.name} {got.data}")
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(on, approved)
        tg.start_soon(on, rejected)
    if won[0].startswith("rejected"):
        return f"{won[0]}, then approved {(await approved.wait(run)).data}"
    return won[0]


def with_event_waits(execution: Execution, *waits: tuple[str, int, str]) -> Execution:
    """`execution` with these (event, occurrence, status) waits, each received one with data."""
    records = [
        EventWaitRecord(
            name=name,
            occurrence=occurrence,
            status=status,
            event_id=f"{name}{occurrence}" if status == "received" else None,
        )
        for name, occurrence, status in waits
    ]
    events = [
        EventRecord(id=f"{r.name}{r.occurrence}", name=r.name, data="x", received_at=NOW)
        for r in records
        if r.event_id is not None
    ]
    update = {"event_waits": records, "events": events}
    execution.claim = execution.claim.model_copy(update=update)
    return execution


async def test_a_race_suspends_on_both_waits() -> None:
    action = await decides.execute(Execution(0))
    assert isinstance(action, SuspendRun)
    assert sorted((w.kind, getattr(w, "name", None)) for w in action.waits) == [
        ("event", "approved"),
        ("event", "rejected"),
    ]


async def test_the_losing_branch_of_a_race_withdraws_its_wait() -> None:
    # `rejected` won: the branch waiting for `approved` is cancelled by the workflow
    execution = with_event_waits(
        Execution(0), ("approved", 0, "waiting"), ("rejected", 0, "received")
    )
    action = await decides.execute(execution)
    assert isinstance(action, SuspendRun)
    assert action.waits == [AwaitEvent(name="approved", occurrence=1)]


async def test_a_withdrawn_wait_is_pending_again_on_replay() -> None:
    # withdrawn by the server: on replay it blocks its branch as it did, which loses again
    execution = with_event_waits(
        Execution(0),
        ("approved", 0, "withdrawn"),
        ("rejected", 0, "received"),
        ("approved", 1, "received"),
    )
    assert await decides.execute(execution) == CompleteRun(result="rejected x, then approved x")
    # nothing won the race yet: the withdrawn wait is reported, and so live again
    execution = with_event_waits(Execution(0), ("approved", 0, "withdrawn"))
    action = await decides.execute(execution)
    assert isinstance(action, SuspendRun)
    assert sorted(w.model_dump_json() for w in action.waits) == sorted(
        w.model_dump_json()
        for w in [
            AwaitEvent(name="approved", occurrence=0),
            AwaitEvent(name="rejected", occurrence=0),
        ]
    )


gathers = workflow("gathers")


@gathers.v("strict", strict_replay=True)
async def gather_strict(run: WorkflowRun, n: int) -> int:
    # `flaky` was in flight at the crash, `double` beside it was on record already
    pair = asyncio.gather(flaky.start(run, n), double.start(run, n))  # noqa: TID251 - users do
    a, b = await pair
    return a + b


@gathers.v("lax")
async def gather_lax(run: WorkflowRun, numbers: list[int]) -> int:
    pair = asyncio.gather(*(double.start(run, n) for n in numbers))  # noqa: TID251 - users do
    return sum(await pair)


async def test_a_gather_replayed_after_a_crash_does_not_diverge_under_strict_replay() -> None:
    flaky_failures.extend([0, 0])  # flaky succeeds at once
    action = await gather_strict.execute(Execution(3, [recorded("double", 3, 6)]))
    assert action == CompleteRun(result=9)


async def test_a_gather_replayed_after_a_crash_carries_no_notice() -> None:
    # double(1) was in flight at the crash; double(2), called after it, was on record
    execution = Execution([1, 2], [recorded("double", 2, 4)])
    assert await gather_lax.execute(execution) == CompleteRun(result=6)
    assert [r.notice for r in execution.records + execution.deferred] == [None]


async def test_a_task_diverging_on_every_call_is_noticed_once_per_execution() -> None:
    history = [recorded("double", n, 2 * n, occurrence=0) for n in range(50)]
    execution = Execution(list(range(1000, 1050)), history)
    await sum_of_doubles.execute(execution)
    notices = [r.notice for r in execution.records + execution.deferred if r.notice]
    assert len(notices) == 1
    assert "50 recorded call(s) of it stayed unused (#0 0, #0 1, #0 2, #0 3, #0 4)" in notices[0]


async def test_a_cleanup_raises_its_error_at_the_first_call_not_on_record() -> None:
    tasks = [recorded("double", 1, 2)]
    action = await sum_of_doubles.execute(Execution([1, 2, 3], tasks, cleanup=CANCELLED))
    # the recorded call replays; the next one, where the run was, is not run
    assert isinstance(action, FailRun)
    assert action.error.code == "workflow_cancelled"
    assert action.error.details["reason"] == "enough"
    assert calls == []


async def test_cleanup_code_runs_tasks_but_a_wait_raises_again() -> None:
    timed_out = ErrorInfo.from_exception(WorkflowTimeoutError("run-1", 5000))
    execution = Execution(5, cleanup=timed_out)
    action = await cleans_up.execute(execution)
    # the `finally` task ran and is recorded; its sleep did not suspend the run
    assert calls == ["double(6)"]
    assert [r.name for r in [*execution.records, *execution.deferred]] == ["double"]
    assert isinstance(action, FailRun)
    assert action.error.code == "workflow_timeout"


async def test_a_cleanup_whose_code_had_all_run_still_runs_its_hooks() -> None:
    # the run's code finished, but the cancel won the race with its completion: its
    # cleanup replays every call from the record and reaches no new step before the hooks
    execution = Execution(1, [recorded("double", 1, 2)], cleanup=CANCELLED)
    action = await hooked.execute(execution)
    assert calls == ["on_cancel(workflow_cancelled)", "after(1)"]
    assert [r.name for r in [*execution.records, *execution.deferred]] == [
        "note-cancel",
        "note-after",
    ]
    assert isinstance(action, FailRun)
    assert action.error.code == "workflow_cancelled"


async def test_a_cleanup_of_a_run_cancelled_in_its_before_hook_runs_on_cancel() -> None:
    # cancelled while its `before` task ran: that is where the cancellation is raised
    execution = Execution(1, cleanup=CANCELLED)
    action = await hooked_before.execute(execution)
    assert calls == ["on_cancel(workflow_cancelled)"]
    assert isinstance(action, FailRun)
    assert action.error.code == "workflow_cancelled"
