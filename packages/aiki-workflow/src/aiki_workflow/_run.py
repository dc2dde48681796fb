"""`WorkflowRun`: the run as the workflow's code sees it, and content-addressed replay.

A task call's address is its name plus a hash of its canonical input (an HMAC when
the codec has a key). Each address has a queue of recorded results: on replay the
n-th call with an address takes the n-th result. Identity is by content, not by
position, so reordering or removing calls in a deployed version does not corrupt
replay; a changed input simply runs the task.

A call with no recorded result runs now: each attempt that fails is recorded with its
error; a short back-off is waited out in process, a long one suspends the run
(`awaiting_retry`) and frees the worker. A result is handed to the worker, which
sends it at once in the background (the code goes on without waiting for the answer),
or with the run's transition if that comes first, so a run's last task costs no
request of its own. A task starts once the earlier results are acknowledged, so a
crash re-runs only the tasks that were running, and a pause or a cancel is seen at the
next task boundary. The code waits for the results on record before a child starts
(its input may come from them).

A replay must make the calls the first execution made: what the code computes
from the clock, from randomness or from fresh ids differs on every replay, so a task
input holding such a value misses its record and the task runs again. `run.now()`,
`run.uuid()` and `run.random()` draw such values once and record them like task
results. When a replay calls a task with an input not on record while recorded calls
of the same task stay unused, the run logs a warning and the record of the new call
carries a notice to the run's detail (under `strict_replay`, the run fails instead).

A remote task's call (`RemoteTask`) is replayed, retried and recorded the same way;
only its attempts run elsewhere: the server pushes each one to the task endpoint that
serves the task, and its answer is the attempt's result or error. An attempt not over
within the server's wait is `pending`: the server records it as running and then its
outcome (by the retry policy the call sent), and the run suspends on it meanwhile
(`awaiting_task`), freeing the worker; the recorded outcome replays like any other.

A task call that failed for good in an earlier workflow-level attempt of the run
(under the version's `retry`) runs again in a later attempt; completed calls stay
memoized.

Sleeps, event waits and child results are durable waits, identified by name (or, for
a child, by address) and occurrence. One already over returns at once on replay;
one still pending blocks the branch of code that asked. The run suspends when every
branch of its code is blocked on such a wait and no task is running: the body is
cancelled, and the worker reports every wait at once and lets the run go, so
`asyncio.gather` over two events suspends the run once. A branch cancelled by the
workflow's own code (the loser of a race) withdraws its wait: it is not reported,
and the server withdraws it too. Due times (a sleep's, a timeout's, a retry's) are
sent as durations and set by the server's clock, never by this process's.

A run claimed for its cleanup (cancelled or timed out after it ran) replays the same
way up to the point where it was: the first call that is not on record (a task, a
child's start) or that would wait raises the cancellation (`WorkflowCancelledError`)
or the timeout (`WorkflowTimeoutError`) into the code there. From then on its
cleanup code (`except`, `finally`, a `Saga`'s compensations, the hooks) runs tasks
as usual, recorded as usual; only a wait raises the error again, as a cleanup cannot
suspend.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from random import random as _random
from typing import TYPE_CHECKING, Any, Generic, NoReturn, cast
from uuid import UUID, uuid4

import anyio
import anyio.lowlevel
from pydantic import ValidationError
from typing_extensions import TypeVar

from aiki_core import (
    AikiError,
    AuthenticationError,
    CodecContext,
    CodecError,
    ConflictError,
    ErrorInfo,
    InvalidRequestError,
    ParentClosePolicy,
    PayloadValidationError,
    RemoteError,
    ReplayDivergenceError,
    RetryPolicy,
    RunInterrupt,
    ServerError,
    TaskExecutionInfo,
    TaskFailedError,
    TaskStatus,
    WorkflowCancelledError,
    WorkflowTimeoutError,
)
from aiki_core.sdk import TaskAttemptInfo, intercepted, new_run_id
from aiki_core.wire import (
    MAX_NOTICE_LENGTH,
    RUN_TERMINAL_STATUSES,
    TASK_TERMINAL_STATUSES,
    AwaitChild,
    AwaitEvent,
    AwaitRetry,
    AwaitSleep,
    AwaitTask,
    CreateWebhookRequest,
    RecordTaskRequest,
    RemoteTaskRequest,
    StartChildRequest,
    canonical_json,
    task_address,
    to_millis,
)
from aiki_workflow._hooks import SleepInfo
from aiki_workflow._interrupts import Abandon, ContinueAsNew, PauseAtBoundary

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from pydantic import JsonValue

    from aiki_core import Logger, PayloadCodec, RunId
    from aiki_core.sdk import RunExecution, TaskInvocation
    from aiki_core.wire import (
        ChildRecord,
        ConcurrencySpec,
        EventRecord,
        EventWaitRecord,
        RunWait,
        SleepRecord,
        TaskAddress,
        TaskRecord,
    )
    from aiki_workflow._events import Event
    from aiki_workflow._hooks import HookTask

T = TypeVar("T")

IN_PROCESS_RETRY_LIMIT = timedelta(seconds=30)
"""Back-offs up to this long are waited out in process; longer ones suspend the run."""

_LOST: tuple[type[AikiError], ...] = (ServerError, ConflictError, AuthenticationError)
"""Write failures that abandon the run: the server is gone (after the worker's retries),
the claim was lost, or the API key refused."""
_LOST_ASKING: tuple[type[AikiError], ...] = (ServerError, AuthenticationError)
"""Failures of a rate limit's acquisition that abandon the run; a conflict there is the
limit's refusal (more units than it has), which fails the task, not a lost claim."""
_LOST_CALLING: tuple[type[AikiError], ...] = (ConflictError, AuthenticationError)
"""Failures of a remote task's call that abandon the run; any other (no endpoint serves
the task, it is failing, the server is out of reach) fails the attempt, to be retried."""
_REFUSED: tuple[type[AikiError], ...] = (AikiError,)
"""Any failure of a held task record: the workflow's code did not cause it (a result over
the server's limit fails the run; anything else gives it up with its records)."""

_DEFAULT_TASK_RETRY = RetryPolicy.never()
_LISTED_CALLS = 5
"""Unused recorded calls a divergence notice names (it says how many there are)."""
_SETTLE_CHECKPOINTS = 5
"""Scheduler turns a blocked run gives its other branches to reach a wait or a task."""


def _now() -> datetime:
    """This process's clock: for what it reports (when an attempt started), never due times."""
    return datetime.now(UTC)


_SUMMARY_LENGTH = 60


def _check_json(result: JsonValue, task_name: str) -> None:
    """Refuse a result no JSON can carry (a lone surrogate from a file name, say).

    Found now, it fails the attempt like any error of the task; found when its record
    is sent, it could not be recorded at all, and the task would run again and again.
    """
    try:
        canonical_json(result)
    except (ValueError, InvalidRequestError) as exc:  # UnicodeEncodeError is a ValueError
        raise PayloadValidationError(
            f"task {task_name!r} returned a result that is not JSON: {type(exc).__name__}: {exc}"
        ) from None


def _summary(value: JsonValue) -> str:
    """A task input, short enough for an error message."""
    text = canonical_json(value).decode()
    return text if len(text) <= _SUMMARY_LENGTH else f"{text[: _SUMMARY_LENGTH - 3]}..."


WaitT = TypeVar("WaitT", AwaitSleep, AwaitEvent)
_PENDING_SLEEP = ("sleeping", "withdrawn")
"""Statuses of a sleep that is not over (a withdrawn one is pending until reported again)."""


def _wait(kind: type[WaitT], what: str, **fields: Any) -> WaitT:
    """A wait, or a `PayloadValidationError` that names it (a name the API refuses, say)."""
    try:
        return kind(**fields)
    except ValidationError as exc:
        raise PayloadValidationError.from_pydantic(f"invalid {what}", exc) from None


@dataclass(frozen=True, slots=True)
class SleepResult:
    """How a durable sleep ended."""

    woken_early: bool
    """Whether `handle.wake()` ended it before its time."""


@dataclass(frozen=True, slots=True)
class Suspended:
    """The run's code can only wait: what it waits for (any one re-queues the run)."""

    waits: list[RunWait]


@dataclass(frozen=True, slots=True)
class _Moved:
    """What a blocked branch watches: set when the run next moves, and the count so far."""

    event: anyio.Event
    ticks: int


@dataclass(frozen=True, slots=True)
class _LongRetry:
    """A task's next attempt is too far off to wait for in process: the run suspends on `wait`.

    The wait of a retry back-off, or of a rate limit's next units.
    """

    wait: AwaitRetry


class _TaskPending(BaseException):
    """The server pushes the remote attempt on without the worker: the run waits for it.

    Raised out of the attempt (past the interceptors and the retry loop, which must
    not count it) to the call, which blocks on `wait` once it is no longer in flight.
    """

    def __init__(self, wait: AwaitTask) -> None:
        super().__init__(wait)
        self.wait = wait


@dataclass(frozen=True, slots=True)
class _MintWebhook:
    """Minting a webhook URL, run (and recorded) as a task of the run."""

    run: WorkflowRun
    event: Event[Any]
    expires: timedelta
    retry: RetryPolicy | None = None
    timeout: timedelta | None = None

    @property
    def name(self) -> str:
        return "aiki.webhook"

    @property
    def input(self) -> JsonValue:
        return {"event": self.event.name, "expires_ms": to_millis(self.expires)}

    def rate_limit(self) -> None:
        return None

    async def run_attempt(self, attempt: TaskAttemptInfo) -> JsonValue:
        request = CreateWebhookRequest(
            revision=self.run.revision,
            event=self.event.name,
            expires_in=self.expires,
            schema=self.event.json_schema(),
        )
        minted = await self.run._write(self.run._execution.create_webhook(request))
        return minted.url


@dataclass(frozen=True, slots=True)
class _Draw:
    """A value drawn once (a time, an id, a random number), run and recorded as a task."""

    name: str
    draw: Callable[[], JsonValue]
    input: JsonValue = None
    retry: RetryPolicy | None = None
    timeout: timedelta | None = None

    def rate_limit(self) -> None:
        return None

    async def run_attempt(self, attempt: TaskAttemptInfo) -> JsonValue:
        return self.draw()


@dataclass(frozen=True, slots=True)
class _Call:
    """One task call being run: what every record of its attempts repeats."""

    invocation: TaskInvocation
    address: TaskAddress
    occurrence: int
    encoded_input: JsonValue
    notice: str | None = None
    """Sent with its records: what the replay noticed when it made this call."""


CtxT = TypeVar("CtxT", default=Any)
"""The type of `run.ctx`: what the version's (or worker's) `create_context` makes."""


class WorkflowRun(Generic[CtxT]):
    """The run a workflow version executes: its identity, logger, context, and replay.

    `ctx` is what the version's `create_context` made for this execution (else the
    worker's, else `None`); `WorkflowRun[Db]` types it.
    """

    def __init__(
        self,
        execution: RunExecution,
        *,
        task_retry: RetryPolicy | None = None,
        on_sleep: HookTask[SleepInfo] | None = None,
        strict_replay: bool = False,
        encode_payload: Callable[[Any], JsonValue] | None = None,
    ) -> None:
        claim = execution.claim
        self._execution = execution
        self._task_retry = task_retry or _DEFAULT_TASK_RETRY
        self._on_sleep = on_sleep
        self._strict_replay = strict_replay
        self._encode_payload = encode_payload
        self._replayed: set[tuple[str, int]] = set()
        self.id: RunId = claim.run.id
        self.name: str = claim.run.workflow
        self.version: str = claim.run.version
        self.attempt: int = claim.run.attempt
        self.log: Logger = execution.log
        self.ctx: CtxT = cast("CtxT", None)  # the version sets it before the run goes on
        # raises CodecError when the key that sealed the run's input is gone
        self._address_key = execution.codec.address_key(claim.input)
        self._recorded: dict[tuple[str, int], TaskRecord] = {
            (t.address, t.occurrence): t for t in claim.tasks
        }
        self._unused: Counter[str] = Counter(
            t.name for t in claim.tasks if t.status in TASK_TERMINAL_STATUSES
        )
        """Ended task calls on record that this replay has not made yet, by task name."""
        self._noticed: set[str] = set()
        """Tasks whose divergence this execution has noticed already."""
        self._sleeps: dict[tuple[str, int], SleepRecord] = {
            (r.name, r.occurrence): r for r in claim.sleeps
        }
        self._event_waits: dict[tuple[str, int], EventWaitRecord] = {
            (r.name, r.occurrence): r for r in claim.event_waits
        }
        self._events: dict[str, EventRecord] = {r.id: r for r in claim.events}
        self._children: dict[tuple[str, int], ChildRecord] = {
            (r.address, r.occurrence): r for r in claim.children
        }
        self._occurrences: Counter[tuple[str, str]] = Counter()
        self._waits: list[RunWait] = []
        self._in_flight = 0
        self._settled = anyio.Event()
        """Set when the last task in flight ends (`drive` waits for it)."""
        self._ticks = 0
        self._moved = _Moved(anyio.Event(), 0)
        self._body: anyio.CancelScope | None = None
        # the server's clock when it handed out the claim (a claim updates the run):
        # what a recorded due time is compared with, as this process's clock may be off
        self._claimed_at = claim.run.updated_at
        self.cleanup: ErrorInfo | None = claim.cleanup
        """Set when the run is claimed for its cleanup: how it ends (cancelled, timed out)."""
        self._interrupted = False
        """Whether this cleanup raised its error where the run was."""

    def _reached(self, *, waits: bool = False) -> None:
        """New work (or, with `waits`, a wait) begins: in a cleanup, raise its error here.

        Only the first new step raises (where the run was); every wait does.
        """
        if self.cleanup is None or (self._interrupted and not waits):
            return
        self._interrupted = True
        details = self.cleanup.details
        if self.cleanup.code == WorkflowTimeoutError.code:
            timeout_ms = details.get("timeout_ms")
            raise WorkflowTimeoutError(self.id, timeout_ms if isinstance(timeout_ms, int) else 0)
        reason = details.get("reason")
        raise WorkflowCancelledError(self.id, reason if isinstance(reason, str) else None)

    def _code_over(self) -> None:
        """In a cleanup, the run's code is over: what runs now (the hooks) is cleanup code.

        The run's code may have reached no new step (all of it was on record: the
        cancel won the race with its completion); the hooks must not take the error
        meant for where the run was.
        """
        self._interrupted = True

    @property
    def revision(self) -> int:
        """The revision of this worker's claim on the run (every write carries it)."""
        return self._execution.claim.run.revision

    @property
    def codec(self) -> PayloadCodec:
        """The codec of everything this run records (the client's)."""
        return self._execution.codec

    def _next(self, kind: str, key: str) -> int:
        """The occurrence of this call: how often the same (kind, key) was called before."""
        occurrence = self._occurrences[kind, key]
        self._occurrences[kind, key] += 1
        return occurrence

    async def execute_task(self, invocation: TaskInvocation) -> JsonValue:
        """The call's recorded result on replay; otherwise run it, record it, return it."""
        codec = self._execution.codec
        address = task_address(invocation.name, invocation.input, key=self._address_key)
        occurrence = self._next("task", address)
        record = self._recorded.get((address, occurrence))
        attempt = 1
        earlier = 0
        notice = None
        if record is None:
            self._reached()
            if self._unused[invocation.name] or (
                self._strict_replay and any(n > 0 for n in self._unused.values())
            ):
                # the other branches of a gather may be about to take their records: let
                # them, or a call made first would seem to diverge from the history
                for _ in range(_SETTLE_CHECKPOINTS):
                    await anyio.lowlevel.checkpoint()
            notice = self._divergence(invocation, address)
        else:
            if (address, occurrence) not in self._replayed:
                self._replayed.add((address, occurrence))
                if record.status in TASK_TERMINAL_STATUSES:
                    self._unused[record.name] -= 1
            # a call that failed for good in an earlier attempt of the run runs again
            rerun = record.status is TaskStatus.FAILED and record.run_attempt < self.attempt
            if record.status is TaskStatus.COMPLETED:
                return codec.decode(
                    record.result, CodecContext.task(self.id, address, occurrence, "result")
                )
            if record.status is TaskStatus.FAILED and not rerun:
                assert record.error is not None
                error = record.error.open(
                    codec, CodecContext.task(self.id, address, occurrence, "error")
                )
                raise TaskFailedError(self.id, invocation.name, error)
            self._reached()
            if record.status is TaskStatus.RUNNING:
                # a long remote attempt the server pushes on: its outcome re-queues the run
                await self.block(AwaitTask(address=address, occurrence=occurrence))
            # attempts go on counting; the retry policy counts this run attempt's only
            attempt = len(record.attempts) + 1
            earlier = sum(1 for a in record.attempts if a.run_attempt < self.attempt)
            next_at = record.next_attempt_at
            if not rerun and next_at is not None and next_at > self._claimed_at:
                await self.block(AwaitRetry(address=address, occurrence=occurrence))
        try:
            with self._task_in_flight():
                outcome = await self._run(invocation, address, occurrence, attempt, earlier, notice)
        except _TaskPending as pending:
            await self.block(pending.wait)
        if isinstance(outcome, _LongRetry):
            await self.block(outcome.wait)
        return outcome

    async def _run(
        self,
        invocation: TaskInvocation,
        address: TaskAddress,
        occurrence: int,
        attempt: int,
        earlier: int,
        notice: str | None,
    ) -> JsonValue | _LongRetry:
        # earlier results must be on record (a crash then re-runs only this task, and
        # their answers tell of a pause); stop if one was refused
        await self._write(self._execution.flush_tasks(), abandon=_REFUSED)
        if self._execution.pause_requested and self._in_flight == 1:
            # a task boundary: nothing else runs; what finished is on record or on its
            # way, and rides on the release; a task started beside others runs, and the
            # run stops at the boundary after it
            raise PauseAtBoundary(self.id)
        codec = self._execution.codec
        policy = invocation.retry or self._task_retry
        call = _Call(
            invocation,
            address,
            occurrence,
            codec.encode(
                invocation.input, CodecContext.task(self.id, address, occurrence, "input")
            ),
            notice,
        )
        while True:
            granted_at = await self._take_units(invocation, call, attempt)
            if isinstance(granted_at, _LongRetry):
                return granted_at
            info = TaskAttemptInfo(
                run_id=self.id,
                task_name=invocation.name,
                address=address,
                occurrence=occurrence,
                attempt=attempt,
                log=self.log.child({"task": invocation.name, "attempt": attempt}),
                rate_limit_granted_at=granted_at,
                call_remote=partial(self._call_remote, call, attempt, policy, attempt - earlier),
                abandoned=partial(self._execution.task_abandoned, invocation.name, attempt),
            )
            started_at = _now()
            try:
                result = await intercepted(
                    self._execution.interceptors,
                    lambda i: i.execute_task,
                    TaskExecutionInfo(self._execution.claim.run, info),
                    partial(invocation.run_attempt, info),
                )
                _check_json(result, invocation.name)
            except (RunInterrupt, anyio.get_cancelled_exc_class()):
                raise
            except Exception as exc:
                error = ErrorInfo.from_exception(exc)
                delay = policy.delay_after(attempt - earlier) if error.retryable else None
                if delay is None:
                    await self._record(
                        call, attempt, TaskStatus.FAILED, started_at=started_at, error=error
                    )
                    raise TaskFailedError(self.id, invocation.name, error) from exc
                await self._record(
                    call,
                    attempt,
                    TaskStatus.AWAITING_RETRY,
                    started_at=started_at,
                    error=error,
                    retry_delay=delay,
                )
                self.log.warn(
                    "task attempt failed; retrying",
                    {"task": invocation.name, "attempt": attempt, "error": error.message},
                )
                if delay > IN_PROCESS_RETRY_LIMIT:
                    # the server set the next attempt's due time when it recorded this one
                    return _LongRetry(AwaitRetry(address=address, occurrence=occurrence))
                await anyio.sleep(delay.total_seconds())
                attempt += 1
                continue
            encoded = codec.encode(
                result, CodecContext.task(self.id, address, occurrence, "result")
            )
            # sent now in the background, or with the run's transition
            self._execution.defer_task(
                self._request(
                    call, attempt, TaskStatus.COMPLETED, started_at=started_at, result=encoded
                )
            )
            return result

    async def _call_remote(
        self, call: _Call, attempt: int, policy: RetryPolicy, retry_attempt: int
    ) -> JsonValue:
        """Have the server push this attempt to the task's endpoint; its opened result.

        Sent once, whatever fails: the attempt fails with it (a `RemoteError` for the
        task's own error), and the task's retry policy decides. Only a lost claim or a
        refused key gives the run up. A `pending` answer suspends the run on the
        attempt (`_TaskPending`): the server records its outcome by `policy`.
        """
        request = RemoteTaskRequest(
            revision=self.revision,
            name=call.invocation.name,
            address=call.address,
            occurrence=call.occurrence,
            attempt=attempt,
            input=call.encoded_input,
            timeout=call.invocation.timeout,
            retry=policy,
            retry_attempt=retry_attempt,
        )
        answer = await self._write(self._execution.call_remote_task(request), abandon=_LOST_CALLING)
        codec = self._execution.codec
        if answer.status == "pending":
            raise _TaskPending(AwaitTask(address=call.address, occurrence=call.occurrence))
        if answer.status == "completed":
            context = CodecContext.task(self.id, call.address, call.occurrence, "result")
            return codec.decode(answer.result, context)
        if answer.error is None:
            raise RemoteError(ErrorInfo(type="AikiError", message="failed without an error"))
        context = CodecContext.task(self.id, call.address, call.occurrence, "error")
        raise answer.error.open(codec, context).to_exception()

    async def _take_units(
        self, invocation: TaskInvocation, call: _Call, attempt: int
    ) -> datetime | None | _LongRetry:
        """Take the attempt's rate limit units; when the server granted them.

        `None` when the task takes none; the wait to suspend on when they are too far off.

        A short wait is waited out here, and the units asked again; waiting is no
        attempt. A key function that fails, or a limit the server refuses (undefined,
        or fewer units than asked), fails the call for good with that error.
        """
        try:
            use = invocation.rate_limit()
            if use is None:
                return None
            while True:
                asked = self._execution.acquire_rate_limit(use)
                answer = await self._write(asked, abandon=_LOST_ASKING)
                if answer.granted:
                    return answer.granted_at
                assert answer.retry_at is not None and answer.retry_after is not None
                reason = f"waiting for rate limit {use.name}" + (
                    f" (key {use.key})" if use.key else ""
                )
                if answer.retry_after > IN_PROCESS_RETRY_LIMIT:
                    until = f"{reason} until {answer.retry_at.isoformat()}"[:MAX_NOTICE_LENGTH]
                    return _LongRetry(AwaitRetry(retry_at=answer.retry_at, reason=until))
                self.log.debug(reason, {"seconds": answer.retry_after.total_seconds()})
                await anyio.sleep(answer.retry_after.total_seconds())
        except (RunInterrupt, anyio.get_cancelled_exc_class()):
            raise
        except Exception as exc:
            error = ErrorInfo.from_exception(exc)
            await self._record(call, attempt, TaskStatus.FAILED, started_at=_now(), error=error)
            raise TaskFailedError(self.id, invocation.name, error) from exc

    def _divergence(self, invocation: TaskInvocation, address: TaskAddress) -> str | None:
        """A call not on record: the notice to report if the replay diverged, else `None`.

        It diverged when ended calls of the same task stay unused: most likely the
        task's input holds a value that differs on every replay (the time, a random
        number, a fresh id), and the task runs again. Logged, and reported with the
        new call's records; under strict replay, `ReplayDivergenceError` instead.
        """
        if self._strict_replay and any(n > 0 for n in self._unused.values()):
            unused = [f"{r.name}({self._input_summary(r)}) #{r.occurrence}" for r in self._left()]
            new_call = f"{invocation.name}({_summary(invocation.input)})"
            raise ReplayDivergenceError(self.id, new_call, unused)
        if not self._unused[invocation.name] or invocation.name in self._noticed:
            return None  # one notice per task and execution: a loop could make thousands
        self._noticed.add(invocation.name)
        left = [r for r in self._left() if r.name == invocation.name][:_LISTED_CALLS]
        # with a keyed codec, inputs are sealed: neither the server nor the logs (often
        # shipped to a third party) may see them in clear
        clear = self._address_key is None
        fields: dict[str, object] = {"task": invocation.name, "address": address}
        if clear:
            fields["new_input"] = _summary(invocation.input)
            fields["unused_inputs"] = [self._input_summary(r) for r in left]
        self.log.warn(
            "replay diverged: a task is called with an input not on record while recorded"
            " calls of it stay unused; it runs again (is its input nondeterministic? use"
            " run.now(), run.uuid(), run.random())",
            fields,
        )
        inputs = f" with input {_summary(invocation.input)}" if clear else ""
        listed = ", ".join(
            f"#{r.occurrence}" + (f" {self._input_summary(r)}" if clear else "") for r in left
        )
        return (
            f"replay diverged: task {invocation.name!r} was called{inputs} (address"
            f" {address}), which is not on record, while"
            f" {self._unused[invocation.name]} recorded call(s) of it"
            f" stayed unused ({listed}); it ran again. Is its input nondeterministic (the"
            " time, a random number, a fresh id)? Use run.now(), run.uuid(), run.random()."
        )[:MAX_NOTICE_LENGTH]

    def _left(self) -> list[TaskRecord]:
        """Ended task calls on record that this replay has not made (yet)."""
        return [
            record
            for key, record in self._recorded.items()
            if key not in self._replayed and record.status in TASK_TERMINAL_STATUSES
        ]

    def _input_summary(self, record: TaskRecord) -> str:
        """A recorded call's input, opened by the codec, short; `<sealed>` if it cannot be."""
        context = CodecContext.task(self.id, record.address, record.occurrence, "input")
        try:
            return _summary(self._execution.codec.decode(record.input, context))
        except CodecError:
            return "<sealed>"

    @contextmanager
    def _task_in_flight(self) -> Iterator[None]:
        self._in_flight += 1
        self._poke()
        try:
            yield
        finally:
            self._in_flight -= 1
            self._poke()
            if not self._in_flight:
                self._settled.set()

    # -- durable waits ---------------------------------------------------------------

    async def sleep(self, name: str, duration: timedelta) -> SleepResult:
        """Sleep durably: the worker lets the run go, and it resumes when `duration` is over.

        Sleeps are told apart by `name` and by how often the name was slept on before in
        this run, so a sleep in a loop is one sleep per turn. `handle.wake()` ends a
        sleep early, and the result says so. The sleep ends `duration` after the
        server first hears of it, by the server's clock.
        """
        occurrence = self._next("sleep", name)
        record = self._sleeps.get((name, occurrence))
        if record is not None and record.status not in _PENDING_SLEEP:
            self._poke()
            return SleepResult(woken_early=record.status == "woken")
        if record is None and duration <= timedelta(0):
            return SleepResult(woken_early=False)
        if self._on_sleep is not None:
            await self._on_sleep.start(
                self, SleepInfo(name=name, occurrence=occurrence, duration=duration)
            )
        # a sleep on record keeps its due time, whatever `duration` says now
        duration = max(duration, timedelta(0))
        await self.block(
            _wait(
                AwaitSleep, f"sleep {name!r}", name=name, occurrence=occurrence, duration=duration
            )
        )

    async def wait_event(self, name: str, timeout: timedelta | None) -> tuple[bool, JsonValue]:
        """Wait durably for the next event called `name`: (received, its decoded data).

        `received` is false when `timeout` passed first (counted from when the server
        first heard of the wait, by its clock). Events sent before the wait are kept
        for it.
        """
        occurrence = self._next("event", name)
        record = self._event_waits.get((name, occurrence))
        if record is not None and record.status == "received":
            assert record.event_id is not None
            self._poke()
            event = self._events[record.event_id]
            if event.origin == "webhook":  # posted in clear by a third party
                return True, event.data
            return True, self._execution.codec.decode(event.data, CodecContext.event(self.id, name))
        if record is not None and record.status == "timed_out":
            self._poke()
            return False, None
        await self.block(
            _wait(
                AwaitEvent,
                f"wait for event {name!r}",
                name=name,
                occurrence=occurrence,
                # a timeout already passed times the wait out at once
                timeout=None if timeout is None else max(timeout, timedelta(0)),
            )
        )

    async def start_child(
        self,
        workflow: str,
        version: str,
        payload: JsonValue,
        *,
        pool: str | None,
        timeout: timedelta | None,
        priority: int | None = None,
        concurrency: ConcurrencySpec | None = None,
        parent_close_policy: ParentClosePolicy = ParentClosePolicy.TERMINATE,
    ) -> tuple[RunId, TaskAddress, int]:
        """Start a child run once per (address, occurrence); its id, address and occurrence.

        The address is the child's workflow and version plus a hash of its payload, as
        for a task call; on replay the child started the first time is found again.
        """
        codec = self._execution.codec
        address = task_address(f"{workflow}@{version}", payload, key=self._address_key)
        occurrence = self._next("child", address)
        record = self._children.get((address, occurrence))
        if record is not None:
            return record.run_id, address, occurrence
        self._reached()
        # writes in flight: the run must not suspend under them (see `block`)
        with self._task_in_flight():
            # the child's input may come from earlier results: on record before it starts
            await self._write(self._execution.flush_tasks(), abandon=_REFUSED)
            child_id = new_run_id()
            request = StartChildRequest(
                revision=self._execution.claim.run.revision,
                address=address,
                occurrence=occurrence,
                workflow=workflow,
                version=version,
                run_id=child_id,
                input=codec.encode(payload, CodecContext.run_input(child_id)),
                pool=pool,
                timeout=timeout,
                priority=priority,
                concurrency=concurrency,
                parent_close_policy=parent_close_policy,
            )
            started = await self._write(self._execution.start_child(request))
        return started.run.id, address, occurrence

    async def child_outcome(
        self, run_id: RunId, address: TaskAddress, occurrence: int
    ) -> ChildRecord:
        """The record of a child that has ended; until it has, the run waits for it."""
        record = self._children.get((address, occurrence))
        if record is None or record.status not in RUN_TERMINAL_STATUSES:
            await self.block(AwaitChild(child_run_id=run_id))
        self._poke()
        return record

    # -- deterministic values ------------------------------------------------------------

    async def now(self) -> datetime:
        """The current time (aware, UTC), drawn once and recorded: a replay gets it again.

        Use it instead of `datetime.now()` or `time.time()` wherever the value reaches a
        task's input, a sleep or a branch: a value that differs on replay changes the
        task's address, and the task runs again.
        """
        drawn = await self.execute_task(_Draw("aiki.now", lambda: _now().isoformat()))
        return datetime.fromisoformat(str(drawn))

    async def uuid(self) -> UUID:
        """A random UUID (version 4), drawn once and recorded: a replay gets it again."""
        drawn = await self.execute_task(_Draw("aiki.uuid", lambda: str(uuid4())))
        return UUID(str(drawn))

    async def random(self) -> float:
        """A random float in [0, 1), drawn once and recorded: a replay gets it again.

        Not for secrets (it is a task result like any other, and not cryptographic).
        """
        drawn = await self.execute_task(_Draw("aiki.random", _random))
        assert isinstance(drawn, (int, float))
        return float(drawn)

    def continue_as_new(self, payload: Any) -> NoReturn:
        """End this run and start a fresh run of the same version with `payload`.

        For long-lived loops: a run may record only so many task calls (a server
        setting), and every replay reads its whole history. The new run starts queued
        with an empty history, in the same pool, with the version's timeout counted
        anew. This run ends as `completed` without a result of its own, linked to the
        new one (`continued_as`; the new run has `continued_from`), and its handle's
        `result()` follows the chain to the last run's result. Its `after` and
        `on_complete` hooks do not run: the work goes on in the new run. A child run
        cannot continue as new (its parent waits for its own result).

        Raises `PayloadValidationError` when `payload` does not match the version's
        payload type; otherwise it does not return.
        """
        if self._execution.claim.run.parent_run_id is not None:
            raise InvalidRequestError(
                f"run {self.id} is a child run; a child cannot continue as new",
                details={"run_id": self.id},
            )
        assert self._encode_payload is not None, "a version's run can continue as new"
        encoded = self._encode_payload(payload)
        new_id = new_run_id()
        sealed = self.codec.encode(encoded, CodecContext.run_input(new_id))
        raise ContinueAsNew(new_id, sealed)

    async def webhook_url(self, event: Event[Any], *, expires: timedelta) -> str:
        """A signed URL whose POST delivers `event` (its body checked against the type).

        Minted once: it is recorded like a task's result, so a replay gets the same URL
        and may pass it to a task (an email, say) without that task running again.
        """
        return str(await self.execute_task(_MintWebhook(self, event, expires)))

    async def block(self, wait: RunWait) -> NoReturn:
        """Block this branch of the run's code on `wait`, until the run suspends.

        The run suspends (its body is cancelled) once no task is running and nothing
        moves for a few scheduler turns: the other branches, if any, are blocked too.
        A branch cancelled by the workflow's code instead (it lost a race, say)
        withdraws `wait`: the run no longer waits for it. In a cleanup, it raises the
        cleanup's error instead: a cleanup cannot suspend.
        """
        self._reached(waits=True)
        self._waits.append(wait)
        self._poke()
        try:
            while True:
                moved = self._moved
                if not self._in_flight:
                    # other branches may be a step away from their own wait (asyncio.gather)
                    for _ in range(_SETTLE_CHECKPOINTS):
                        await anyio.lowlevel.checkpoint()
                    if not self._in_flight and self._ticks == moved.ticks:
                        assert self._body is not None, "a run blocks only inside drive()"
                        self._body.cancel()
                        await anyio.sleep_forever()
                await moved.event.wait()
        finally:
            # the run's suspension cancels the body: then every wait is reported
            if self._body is None or not self._body.cancel_called:
                self._waits = [w for w in self._waits if w is not wait]

    def _poke(self) -> None:
        """Note that the run moved (a task started or ended, a wait was added or ended)."""
        self._ticks += 1
        if self._waits:  # only a branch blocked on a wait watches for moves
            moved, self._moved = self._moved, _Moved(anyio.Event(), self._ticks)
            moved.event.set()

    async def drive(self, body: Awaitable[T]) -> T | Suspended:
        """Run the workflow's `body` until it returns or raises, or until it can only wait.

        In the last case the body is cancelled and `Suspended` lists what it waits for.
        """
        with anyio.CancelScope() as self._body:
            outcome = await body
            # tasks the body left running (the other branches of an `asyncio.gather` one
            # of whose branches failed) belong to this attempt: their records go with its
            # report, or a retry of the run would run them again beside themselves
            while self._in_flight:
                self._settled = anyio.Event()
                await self._settled.wait()
            return outcome
        return Suspended(list(self._waits))

    async def _record(self, call: _Call, attempt: int, status: TaskStatus, **fields: Any) -> None:
        request = self._request(call, attempt, status, **fields)
        await self._write(self._execution.record_task(request))

    def _request(
        self,
        call: _Call,
        attempt: int,
        status: TaskStatus,
        error: ErrorInfo | None = None,
        **fields: Any,
    ) -> RecordTaskRequest:
        if error is not None:
            context = CodecContext.task(self.id, call.address, call.occurrence, "error")
            error = error.seal(self._execution.codec, context)
        return RecordTaskRequest(
            revision=self._execution.claim.run.revision,
            name=call.invocation.name,
            address=call.address,
            occurrence=call.occurrence,
            attempt=attempt,
            status=status,
            input=call.encoded_input,
            retry=call.invocation.retry,
            error=error,
            notice=call.notice,
            **fields,
        )

    @staticmethod
    async def _write(write: Awaitable[T], abandon: tuple[type[AikiError], ...] = _LOST) -> T:
        try:
            return await write
        except abandon as exc:
            # no failure of the workflow's, and not for its `except Exception` to see
            raise Abandon(exc) from exc
