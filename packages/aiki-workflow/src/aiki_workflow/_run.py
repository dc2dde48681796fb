"""`WorkflowRun`: the run as the workflow's code sees it, and content-addressed replay.

A task call's address is its name plus a hash of its canonical input (an HMAC when
the codec has a key). Each address has a queue of recorded results: on replay the
n-th call with an address takes the n-th result. Identity is by content, not by
position, so reordering or removing calls in a deployed version does not corrupt
replay; a changed input simply runs the task.

A call with no recorded result runs now: each attempt that fails is recorded with its
error; a short back-off is waited out in process, a long one suspends the run
(`awaiting_retry`) and frees the worker. A result is recorded lazily: it is held
until the next task is about to run (which may depend on it) and written then, or
carried by the run's transition, so a run's last task costs no request of its own.
Only results produced since the last task started can be unwritten, so a crash
re-runs only those tasks (in sequential code, at most one).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio

from aiki_core import (
    AwaitRetry,
    CodecContext,
    ConflictError,
    ErrorInfo,
    RecordTaskRequest,
    RetryPolicy,
    RunInterrupt,
    ServerError,
    TaskAttemptInfo,
    TaskFailedError,
    TaskStatus,
    task_address,
)
from aiki_workflow._interrupts import Abandon, Suspend

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from pydantic import JsonValue

    from aiki_core import (
        Logger,
        RunExecution,
        RunId,
        TaskAddress,
        TaskInvocation,
        TaskRecord,
    )

IN_PROCESS_RETRY_LIMIT = timedelta(seconds=30)
"""Back-offs up to this long are waited out in process; longer ones suspend the run."""

_DEFAULT_TASK_RETRY = RetryPolicy.never()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Call:
    """One task call being run: what every record of its attempts repeats."""

    invocation: TaskInvocation
    address: TaskAddress
    occurrence: int
    encoded_input: JsonValue


class WorkflowRun:
    """The run a workflow version executes: its identity, logger, context, and replay."""

    def __init__(self, execution: RunExecution, *, task_retry: RetryPolicy | None = None) -> None:
        claim = execution.claim
        self._execution = execution
        self._task_retry = task_retry or _DEFAULT_TASK_RETRY
        self.id: RunId = claim.run.id
        self.name: str = claim.run.workflow
        self.version: str = claim.run.version
        self.attempt: int = claim.run.attempt
        self.log: Logger = execution.log
        self.ctx: Any = execution.context
        self._recorded: dict[tuple[str, int], TaskRecord] = {
            (t.address, t.occurrence): t for t in claim.tasks
        }
        self._occurrences: Counter[str] = Counter()

    def _codec_context(self, address: str, occurrence: int, part: str) -> CodecContext:
        return CodecContext(self.id, f"task:{address}:{occurrence}:{part}")

    async def execute_task(self, invocation: TaskInvocation) -> JsonValue:
        """The call's recorded result on replay; otherwise run it, record it, return it."""
        codec = self._execution.codec
        address = task_address(invocation.name, invocation.input, key=codec.address_key)
        occurrence = self._occurrences[address]
        self._occurrences[address] += 1
        record = self._recorded.get((address, occurrence))
        attempt = 1
        if record is not None:
            if record.status is TaskStatus.COMPLETED:
                return codec.decode(
                    record.result, self._codec_context(address, occurrence, "result")
                )
            if record.status is TaskStatus.FAILED:
                assert record.error is not None
                raise TaskFailedError(self.id, invocation.name, record.error)
            attempt = len(record.attempts) + 1
            if record.next_attempt_at is not None and record.next_attempt_at > _now():
                raise Suspend([AwaitRetry(retry_at=record.next_attempt_at)])
        return await self._run(invocation, address, occurrence, attempt)

    async def _run(
        self, invocation: TaskInvocation, address: TaskAddress, occurrence: int, attempt: int
    ) -> JsonValue:
        # what this task may depend on must be on record before it runs
        await self._write(self._execution.flush_tasks())
        codec = self._execution.codec
        policy = invocation.retry or self._task_retry
        call = _Call(
            invocation,
            address,
            occurrence,
            codec.encode(invocation.input, self._codec_context(address, occurrence, "input")),
        )
        while True:
            info = TaskAttemptInfo(
                run_id=self.id,
                task_name=invocation.name,
                address=address,
                occurrence=occurrence,
                attempt=attempt,
                log=self.log.child({"task": invocation.name, "attempt": attempt}),
            )
            started_at = _now()
            try:
                result = await invocation.run_attempt(info)
            except (RunInterrupt, anyio.get_cancelled_exc_class()):
                raise
            except Exception as exc:
                error = ErrorInfo.from_exception(exc)
                delay = policy.delay_after(attempt) if error.retryable else None
                if delay is None:
                    await self._record(
                        call, attempt, TaskStatus.FAILED, started_at=started_at, error=error
                    )
                    raise TaskFailedError(self.id, invocation.name, error) from exc
                retry_at = _now() + delay
                await self._record(
                    call,
                    attempt,
                    TaskStatus.AWAITING_RETRY,
                    started_at=started_at,
                    error=error,
                    retry_at=retry_at,
                )
                self.log.warn(
                    "task attempt failed; retrying",
                    {"task": invocation.name, "attempt": attempt, "error": error.message},
                )
                if delay > IN_PROCESS_RETRY_LIMIT:
                    raise Suspend([AwaitRetry(retry_at=retry_at)]) from None
                await anyio.sleep(delay.total_seconds())
                attempt += 1
                continue
            encoded = codec.encode(result, self._codec_context(address, occurrence, "result"))
            # recorded before the next task runs, or with the run's transition
            self._execution.defer_task(
                self._request(
                    call, attempt, TaskStatus.COMPLETED, started_at=started_at, result=encoded
                )
            )
            return result

    async def _record(self, call: _Call, attempt: int, status: TaskStatus, **fields: Any) -> None:
        request = self._request(call, attempt, status, **fields)
        await self._write(self._execution.record_task(request))

    def _request(
        self, call: _Call, attempt: int, status: TaskStatus, **fields: Any
    ) -> RecordTaskRequest:
        return RecordTaskRequest(
            revision=self._execution.claim.run.revision,
            name=call.invocation.name,
            address=call.address,
            occurrence=call.occurrence,
            attempt=attempt,
            status=status,
            input=call.encoded_input,
            retry=call.invocation.retry,
            **fields,
        )

    @staticmethod
    async def _write(write: Awaitable[object]) -> None:
        try:
            await write
        except (ServerError, ConflictError) as exc:
            # the server is gone or the claim was lost: no failure of the workflow's, and
            # not for its `except Exception` to see
            raise Abandon(exc) from exc
