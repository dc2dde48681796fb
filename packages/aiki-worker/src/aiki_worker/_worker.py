"""`Worker`: claims runs of the versions it registers and executes them.

It long-polls the server for work, runs up to `max_concurrent_runs` at once, and
heartbeats every run it holds. A second long-poll (`_directives`) tells it within
moments that a run it holds was cancelled, taken away or paused, and hands it the
runs a dry-run migration asks it to replay without side effects; the heartbeat's
answer says the same (if that poll fails), and so does a 409 on a write. A paused run
is let go at its next task boundary: the task in flight finishes and is recorded. A
run that suspends (a sleep, an event, a long retry) is reported and let go: the
worker never holds a waiting run.

No answer of the server stops the worker but a refused API key: when the server
cannot be reached or answers an error, claims and heartbeats back off (up to
`max_backoff`, or as long as a `Retry-After` asks) and recover when it returns. A
run's writes are tried again while its claim can hold (`write_retry_timeout`); then
the run is given up, with the task results not yet on record, and another worker
resumes it. A run whose result is larger than the server takes fails with
`PayloadTooLargeError` in its detail. `stop()` (or SIGINT/SIGTERM under
`run()`) stops claiming, lets running runs finish for up to
`graceful_shutdown_timeout`, then cancels the rest and gives them back to the queue;
when leaving the `async with` block is cancelled (a timeout around it, say), the runs
are cancelled and given back at once.

When the server refuses the client's API key (a 401: missing, unknown or revoked),
waiting does not help: the worker stops at once, its runs go back to the queue when
their claims go idle, and `run()` (or the `async with` block) raises the
`AuthenticationError`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from asyncio import CancelledError
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Self

import anyio

from aiki_core import AuthenticationError
from aiki_core.wire import (
    DEFAULT_POOL,
    MAX_CLAIMED_PER_POLL,
    MAX_HELD_RUNS,
    ClaimRequest,
    ErrorCode,
    RunDirective,
    WorkflowCapability,
)
from aiki_worker._directives import DirectivesPoll
from aiki_worker._dry_run import DryRunJobs
from aiki_worker._running import ContextFactory, Held, Runner, heartbeats
from aiki_worker._writes import asked_wait

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup

    from aiki_core import Interceptor, Logger
    from aiki_core.sdk import ExecutableVersion, WorkerApi


class Worker:
    """Executes runs of `workflows` (workflow versions) claimed from the server.

    `await worker.run()` works until `stop()` (or a signal); `async with worker:` works
    while the block runs, and leaving the block stops it as `stop()` does. The block may
    be entered in one task and left in another, so a pytest-asyncio fixture can hold a
    worker:

        @pytest.fixture
        async def worker(client):
            async with Worker(client, [orders_v1]) as worker:
                yield worker

    A plain (not `async`) task runs in a thread, which cannot be interrupted: when its
    attempt is cancelled, its `TaskContext.cancelled` turns true, and if its thread
    still runs `cancel_grace` later, the worker logs it as abandoned and notes it in
    the run's history.

    `interceptors` (`aiki_core.Interceptor`) wrap each execution of a run, each task
    attempt that really runs and each start of a child, e.g. to trace them
    (`aiki_otel.TracingInterceptor`).

    `create_context` makes `run.ctx` for each execution of a run (sync or async) whose
    version has no factory of its own; one that raises fails that attempt.
    """

    def __init__(
        self,
        client: WorkerApi,
        workflows: Sequence[ExecutableVersion],
        *,
        id: str | None = None,
        pools: Sequence[str] = (DEFAULT_POOL,),
        max_concurrent_runs: int = 10,
        heartbeat_interval: timedelta = timedelta(seconds=30),
        graceful_shutdown_timeout: timedelta = timedelta(seconds=30),
        create_context: ContextFactory | None = None,
        logger: Logger | None = None,
        claim_wait: timedelta = timedelta(seconds=30),
        max_backoff: timedelta = timedelta(seconds=5),
        write_retry_timeout: timedelta = timedelta(seconds=90),
        interceptors: Sequence[Interceptor] = (),
        cancel_grace: timedelta = timedelta(seconds=10),
    ) -> None:
        if not workflows:
            raise ValueError("a worker needs at least one workflow version")
        if not 1 <= max_concurrent_runs <= MAX_HELD_RUNS:
            # its heartbeats and directives polls name every run it holds
            raise ValueError(f"max_concurrent_runs must be from 1 to {MAX_HELD_RUNS}")
        self.client = client
        self.id = id or f"{socket.gethostname()}-{os.getpid()}-{id_suffix()}"
        self.versions = {(v.workflow, v.version): v for v in workflows}
        self.pools = tuple(pools)
        self.max_concurrent_runs = max_concurrent_runs
        self.heartbeat_interval = heartbeat_interval
        self.graceful_shutdown_timeout = graceful_shutdown_timeout
        self.create_context = create_context
        self.claim_wait = claim_wait
        self.max_backoff = max_backoff
        self.write_retry_timeout = write_retry_timeout
        """How long a run's failing write is tried again: the server's claim idle timeout."""
        self.interceptors = tuple(interceptors)
        """Their hooks wrap each execution of a run, each task attempt and each child's start."""
        self.log = (logger or client.log).child({"worker_id": self.id})
        self.runner = Runner(
            client,
            workflows,
            log=self.log,
            on_refused=self._refuse,
            create_context=create_context,
            write_retry_timeout=write_retry_timeout.total_seconds(),
            interceptors=self.interceptors,
            cancel_grace=cancel_grace.total_seconds(),
            worker_id=self.id,
        )
        self._held: dict[str, Held] = {}
        self._directives = DirectivesPoll(
            client,
            self.id,
            self._held,
            DryRunJobs(client, self.id, self.versions, self.log),
            wait=claim_wait,
            max_backoff=max_backoff.total_seconds(),
            log=self.log,
            on_refused=self._refuse,
        )
        self._slot_freed = anyio.Event()
        self._stopping = anyio.Event()
        self._stopped = anyio.Event()
        self._runs_scope = anyio.CancelScope()
        self._claims_scope = anyio.CancelScope()
        self._grace = anyio.CancelScope()
        """The wait for running runs to finish; cancelled, they are given back at once."""
        self._started = False
        self._refused: AuthenticationError | None = None
        """Why the server refused this worker, which then stopped."""
        self._crash: Exception | None = None
        """What ended the loops of an `async with` block, but a refusal."""
        self._loops: asyncio.Task[None] | None = None
        self._watchers: TaskGroup
        """Where abandoned threads are watched: outside the runs, which need not wait."""
        self._host: asyncio.Task[Any] | None = None
        self._host_cancelling = 0
        self._cancelled_host = False
        self._leaving = False

    @property
    def capabilities(self) -> list[WorkflowCapability]:
        """The (workflow, version, pool) triples this worker claims."""
        return [
            WorkflowCapability(workflow=w, version=v, pool=p)
            for (w, v) in self.versions
            for p in self.pools
        ]

    async def run(self) -> None:
        """Work until `stop()` or SIGINT/SIGTERM (signals only in the main thread).

        Raises `AuthenticationError` if the server refused the API key. Cancelled (a
        timeout around it, say), it gives the runs it holds back to the queue at once,
        as leaving a cancelled `async with` block does.
        """
        async with self, anyio.create_task_group() as tg:
            if threading.current_thread() is threading.main_thread():
                tg.start_soon(self._stop_on_signal)
            await self._stopped.wait()
            tg.cancel_scope.cancel()

    async def stop(self) -> None:
        """Stop claiming, let runs finish up to the grace period, then give the rest back."""
        self._stopping.set()
        self._claims_scope.cancel()
        if not self._stopped.is_set():  # stopped already: nothing to wait for (or to cancel)
            await self._stopped.wait()

    async def __aenter__(self) -> Self:
        # the loops run in a task of their own, so the block may be left in another task
        # than the one that entered it (pytest-asyncio sets a fixture up and tears it down
        # in two tasks; a task group must be left in the task that entered it)
        self._start()
        self._host = asyncio.current_task()
        self._host_cancelling = 0 if self._host is None else self._host.cancelling()
        self._loops = asyncio.create_task(self._serve_in_background())  # noqa: TID251
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loops is None:
            raise RuntimeError("the worker's `async with` block was left but never entered")
        self._leaving = True
        self._stopping.set()
        self._claims_scope.cancel()
        try:
            await asyncio.shield(self._loops)
        except CancelledError:
            # cancelled while its runs finish (a timeout around the block, say): give them
            # back to the queue now, rather than leave them claimed until the claims go idle
            self._grace.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.shield(self._loops)
            raise
        failure = self._refused or self._crash
        if failure is None:
            return
        ours = False
        host = asyncio.current_task()
        if self._cancelled_host and host is not None and host is self._host:
            # the block's cancellation was ours (as `asyncio.timeout` does it): take it back
            ours = host.uncancel() <= self._host_cancelling
        if exc is None or (ours and isinstance(exc, CancelledError)):
            raise failure from None
        # else the block's own error, or a cancellation from outside, goes on

    def _start(self) -> None:
        if self._started:
            raise RuntimeError("a Worker runs once; create another to run again")
        self._started = True

    async def _serve_in_background(self) -> None:
        try:
            await self._serve()
        except Exception as exc:  # a bug of the loops: the block ends with it
            self.log.error("the worker's loops crashed; it stops", {"error": repr(exc)})
            self._crash = exc
        if (self._refused or self._crash) and not self._leaving:
            # end the `async with` block, if its task is still in it
            if self._host is not None and not self._host.done():
                self._cancelled_host = True
                self._host.cancel()

    # -- the loops -----------------------------------------------------------------------

    async def _serve(self) -> None:
        self.log.info(
            "worker started",
            {"versions": [f"{w} {v}" for (w, v) in self.versions], "pools": list(self.pools)},
        )
        try:
            async with anyio.create_task_group() as tg:
                self._watchers = tg
                tg.start_soon(self._heartbeats)
                tg.start_soon(self._directives.run_forever)
                with self._runs_scope:
                    async with anyio.create_task_group() as runs:
                        with self._claims_scope:
                            await self._claims(runs)
                        await self._drain()
                tg.cancel_scope.cancel()
        finally:
            self._stopped.set()
            self.log.info("worker stopped")

    async def _stop_on_signal(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for received in signals:
                self.log.info("stopping on signal", {"signal": signal.Signals(received).name})
                self._stopping.set()
                self._claims_scope.cancel()
                return

    async def _claims(self, runs: TaskGroup) -> None:
        backoff = 0.0
        while not self._stopping.is_set():
            free = self.max_concurrent_runs - len(self._held)
            if free <= 0:
                await self._slot_freed.wait()
                self._slot_freed = anyio.Event()
                continue
            try:
                response = await self.client.claim(
                    ClaimRequest(
                        worker_id=self.id,
                        capabilities=self.capabilities,
                        max_runs=min(free, MAX_CLAIMED_PER_POLL),
                        wait=self.claim_wait,
                    )
                )
            except AuthenticationError as exc:
                self._refuse(exc)
                return
            except Exception as exc:  # any other answer: try again later, never stop
                backoff = min(max(backoff * 2, 0.1), self.max_backoff.total_seconds())
                wait = max(backoff, asked_wait(exc) or 0.0)
                self.log.warn("cannot claim; backing off", {"error": str(exc), "seconds": wait})
                await anyio.sleep(wait)
                continue
            backoff = 0.0
            for claim in response.runs:
                held = self.runner.hold(claim, runs.start_soon, self._watchers.start_soon)
                stale = self._held.get(claim.run.id)
                if stale is not None:  # it can write nothing: its claim went idle, or
                    # the run was cancelled into the cleanup this claim is for
                    cleanup = claim.cleanup
                    cancelled = cleanup is not None and cleanup.code == ErrorCode.WORKFLOW_CANCELLED
                    stale.direct(RunDirective.CANCEL if cancelled else RunDirective.LOST)
                self._held[claim.run.id] = held
                runs.start_soon(self._execute, held)
            if response.runs:
                self._directives.held_more()

    async def _heartbeats(self) -> None:
        await heartbeats(
            self.client,
            self.id,
            self._held,
            interval=self.heartbeat_interval.total_seconds(),
            log=self.log,
            on_refused=self._refuse,
        )

    def _refuse(self, exc: AuthenticationError) -> None:
        """The server refused the API key: stop claiming and running (nothing can be written).

        The runs held stay claimed until their claims go idle; then other workers (with
        a key the server takes) resume them.
        """
        if self._refused is None:
            self._refused = exc
            self.log.error(
                "the server refused the API key; stopping the worker", {"error": exc.message}
            )
        self._stopping.set()
        self._claims_scope.cancel()
        self._runs_scope.cancel()

    async def _drain(self) -> None:
        """After claiming stopped: wait for the grace period, then give the rest back."""
        grace = self.graceful_shutdown_timeout.total_seconds()
        self._grace.deadline = anyio.current_time() + grace
        with self._grace:
            await self._all_let_go()
        for held in self._held.values():
            held.give_back()
        with anyio.move_on_after(grace):
            await self._all_let_go()
        if self._held:  # releases not sent by then are given up
            self._runs_scope.cancel()

    async def _all_let_go(self) -> None:
        while self._held:
            await self._slot_freed.wait()
            self._slot_freed = anyio.Event()

    # -- one run -------------------------------------------------------------------------

    async def _execute(self, held: Held) -> None:
        try:
            await self.runner.execute(held)
        finally:
            run_id = held.claim.run.id
            if self._held.get(run_id) is held:  # not a newer claim of the same run
                del self._held[run_id]
            self._slot_freed.set()


def id_suffix() -> str:
    """Four random hex digits, to tell apart two workers of one process."""
    return os.urandom(2).hex()
