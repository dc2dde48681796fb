"""`Execution`: what a version gets to execute one claimed run (a `RunExecution`).

A task's completed result is sent as soon as the task returns, in the background: the
workflow goes on without waiting for the answer. Results that come in while a send is
under way go together in the next one; those not yet sent when the run transitions
ride on the transition, so the last task of a sequential run costs no request of its
own. A task starts once every earlier result is acknowledged: a crash re-runs only the
tasks that were running, an outage does not let a run race ahead of what is on
record, and the answer to the last record (a `pause` directive, a refusal after a
cancel) is known before the next side effect starts. Tasks running side by side
(`asyncio.gather`) do not wait for each other's records.

A record stays held until the server acknowledges it. A failure that may pass is
tried again while the claim can hold (`_writes`); one that cannot is kept and raised
where the run next checks its records (before a task starts, before a child starts,
at the transition), and the records still held go with the run's report.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from aiki_core import RunId, StartRunInfo
from aiki_core.sdk import fit_trace_context, intercepted, new_run_id
from aiki_core.wire import MAX_TASKS_PER_TRANSITION, AbandonedTaskRequest, RunDirective
from aiki_worker._writes import retried, transient

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Sequence

    from aiki_core import Interceptor, Logger, PayloadCodec
    from aiki_core.sdk import WorkerApi
    from aiki_core.wire import (
        AcquireRateLimitResponse,
        ClaimedRun,
        CreateWebhookRequest,
        CreateWebhookResponse,
        PushedTaskAnswer,
        RateLimitUse,
        RecordTaskRequest,
        RecordTaskResponse,
        RemoteTaskRequest,
        StartChildRequest,
        StartRunResponse,
    )

    Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]
    """Starts a background task (a task group's `start_soon`)."""

T = TypeVar("T")


class Execution:
    """One claimed run on this worker."""

    __slots__ = (
        "api",
        "claim",
        "create_context",
        "interceptors",
        "log",
        "pause_requested",
        "retry_within",
        "cancel_grace",
        "worker_id",
        "_spawn",
        "_watch",
        "_unsent",
        "_sending",
        "_idle",
        "_failure",
    )

    def __init__(
        self,
        api: WorkerApi,
        claim: ClaimedRun,
        log: Logger,
        create_context: Callable[[ClaimedRun], object] | None,
        spawn: Spawn,
        *,
        retry_within: float = 90.0,
        interceptors: Sequence[Interceptor] = (),
        cancel_grace: float = 10.0,
        worker_id: str | None = None,
        watch: Spawn | None = None,
    ) -> None:
        self.api = api
        self.claim = claim
        self.log = log
        self.create_context = create_context
        self.pause_requested = False
        """Set by a `pause` directive (a heartbeat's or a task record's answer)."""
        self.retry_within = retry_within
        """Seconds a write that may pass is tried for (the claim's idle timeout)."""
        self.interceptors = interceptors
        self.cancel_grace = cancel_grace
        """Seconds a cancelled attempt's thread may run on before it is reported abandoned."""
        self.worker_id = worker_id
        """The pulling worker's id (none for a workflow endpoint), for the abandonment note."""
        self._spawn = spawn
        self._watch = watch or spawn
        """Starts the watch of an abandoned thread, which may outlive the run's execution."""
        self._unsent: list[RecordTaskRequest] = []
        """Held records no send has taken yet."""
        self._sending: list[RecordTaskRequest] = []
        """Held records of the send under way, not yet acknowledged."""
        self._idle = anyio.Event()
        self._idle.set()
        """Set while no send is under way."""
        self._failure: Exception | None = None
        """Why the records stopped going out: the server refused one for good."""

    @property
    def codec(self) -> PayloadCodec:
        """The client's codec."""
        return self.api.codec

    async def _write(self, write: Callable[[], Awaitable[T]], what: str) -> T:
        return await retried(
            write, when=transient, within=self.retry_within, log=self.log, what=what
        )

    async def record_task(self, request: RecordTaskRequest) -> RecordTaskResponse:
        """Record a task attempt through the client, now."""
        run_id = self.claim.run.id
        recorded = await self._write(lambda: self.api.record_task(run_id, request), "a task record")
        # a resume before the boundary withdraws the pause: the latest answer decides
        self.pause_requested = recorded.directive is RunDirective.PAUSE
        return recorded

    async def start_child(self, request: StartChildRequest) -> StartRunResponse:
        """Start a child run of this run through the client, through the interceptors."""
        run_id = self.claim.run.id
        assert request.run_id is not None, "a parent mints its child's id"
        info = StartRunInfo(request.workflow, request.version, RunId(request.run_id), run_id)

        async def start() -> StartRunResponse:
            outgoing = request.model_copy(
                update={"trace_context": fit_trace_context(info.trace_context)}
            )
            return await self._write(
                lambda: self.api.start_child(run_id, outgoing), "a child's start"
            )

        return await intercepted(self.interceptors, lambda i: i.start_run, info, start)

    async def create_webhook(self, request: CreateWebhookRequest) -> CreateWebhookResponse:
        """Mint a signed webhook URL for this run through the client."""
        run_id = self.claim.run.id
        return await self._write(
            lambda: self.api.create_webhook(run_id, request), "a webhook's minting"
        )

    async def acquire_rate_limit(self, use: RateLimitUse) -> AcquireRateLimitResponse:
        """Take a task attempt's units from its rate limit through the client, or learn when.

        Each retry of the request carries its id: a grant whose answer was lost comes back.
        """
        request_id = new_run_id()  # a fresh ULID, as a run's id is minted
        return await self._write(
            lambda: self.api.acquire_rate_limit(use, request_id), "a rate limit's units"
        )

    async def call_remote_task(self, request: RemoteTaskRequest) -> PushedTaskAnswer:
        """Have the server push a task attempt to its endpoint, once: each retry is an attempt."""
        return await self.api.call_remote_task(self.claim.run.id, request)

    def task_abandoned(
        self, task_name: str, attempt: int, still_running: Callable[[], bool]
    ) -> None:
        """Report the attempt abandoned if its thread still runs `cancel_grace` seconds on.

        A log line, and a note in the run's history: the worker cannot stop a thread,
        and does not leave it running silently.
        """
        run = self.claim.run
        details = {"task": task_name, "attempt": attempt, "seconds": self.cancel_grace}

        async def watch() -> None:
            try:
                await anyio.sleep(self.cancel_grace)
            except anyio.get_cancelled_exc_class():  # the worker stops: say so, at least
                if still_running():
                    self.log.error("a cancelled task's thread still runs; abandoned", details)
                raise
            if not still_running():
                return
            self.log.error("a cancelled task's thread still runs; abandoned", details)
            request = AbandonedTaskRequest(
                worker_id=self.worker_id,
                revision=run.revision,
                task_name=task_name,
                attempt=attempt,
                grace=timedelta(seconds=self.cancel_grace),
            )
            try:
                await self._write(
                    lambda: self.api.report_abandoned_task(run.id, request), "an abandonment note"
                )
            except Exception as exc:  # the log line stays
                self.log.warn("cannot note the abandoned task", {"error": str(exc)})

        self._watch(watch)

    def defer_task(self, request: RecordTaskRequest) -> None:
        """Hold a task record and send it now, in the background (or with the next send)."""
        self._unsent.append(request)
        if self._idle.is_set() and self._failure is None:
            self._idle = anyio.Event()
            self._spawn(self._send_held)

    async def flush_tasks(self) -> None:
        """Wait until every held record is acknowledged; raise what stopped one."""
        while True:
            await self._idle.wait()
            if self._failure is not None:
                raise self._failure
            if not self._unsent:
                return
            self._idle = anyio.Event()  # left unsent by a cancelled send: send them now
            await self._send_held()

    async def take_deferred(self) -> list[RecordTaskRequest]:
        """The held records, for the transition to carry (once the send under way is over).

        Records refused before go too: the transition is their last chance, and it is
        the report's to give up on them.
        """
        taken, self._unsent = self._unsent, []
        await self._idle.wait()
        taken, self._unsent = self._unsent + taken, []
        if len(taken) > MAX_TASKS_PER_TRANSITION:
            self._unsent = taken
            await self.flush_tasks()
            return []
        return taken

    async def _send_held(self) -> None:
        """Send the held records, side by side, until none is left or one is refused."""
        try:
            while self._unsent and self._failure is None:
                self._sending, self._unsent = self._unsent, []
                self._failure = await self._send(self._sending)
                self._unsent[:0] = self._sending  # what was not acknowledged
                self._sending = []
        finally:  # cancelled (the worker stops): nothing held is lost
            self._unsent[:0] = self._sending
            self._sending = []
            self._idle.set()

    async def _send(self, records: list[RecordTaskRequest]) -> Exception | None:
        """Send `records`, dropping each acknowledged one from the list; the first refusal."""
        failures: list[Exception] = []

        async def record(request: RecordTaskRequest) -> None:
            try:
                await self.record_task(request)
            except Exception as exc:  # kept for the run's next check, as the send's failure
                failures.append(exc)
            else:
                records.remove(request)

        if len(records) == 1:
            await record(records[0])
        else:
            async with anyio.create_task_group() as tg:
                for request in list(records):
                    tg.start_soon(record, request)
        if failures:
            self.log.warn("a task record was refused", {"error": str(failures[0])})
        return failures[0] if failures else None
