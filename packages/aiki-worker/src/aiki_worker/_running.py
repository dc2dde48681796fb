"""`Runner`: executes one claimed run and reports it; what `Worker` and the ASGI app share.

A run is held (`Held`) while it executes: its claim, its `Execution` and the cancel
scope that stops it. Whoever holds it (a pulling worker, or a pushed request) only
decides when to start it, how to heartbeat it and when to give it back; executing the
version, reporting its action with the task records still held, failing a run the
engine cannot carry on and giving back one that could not be written are the same
code for both.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Literal

import anyio

from aiki_core import (
    AuthenticationError,
    CodecContext,
    ConflictError,
    ErrorInfo,
    PayloadTooLargeError,
    RunExecutionInfo,
    RunInterrupt,
)
from aiki_core.sdk import intercepted
from aiki_core.wire import (
    FailRun,
    HeartbeatRequest,
    ReleaseRun,
    RunDirective,
    RunLease,
    TransitionRunRequest,
)
from aiki_worker._directives import follow
from aiki_worker._execution import Execution
from aiki_worker._writes import asked_wait, not_final, retried, unsendable

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from aiki_core import Interceptor, Logger
    from aiki_core.sdk import ExecutableVersion, WorkerApi
    from aiki_core.wire import ClaimedRun, RecordTaskRequest, RunAction, RunSummary
    from aiki_worker._execution import Spawn

HEARTBEAT_RETRY = 0.125
"""Part of the heartbeat interval after which a failed heartbeat is sent again."""

ContextFactory = Callable[["ClaimedRun"], object]
"""Makes the per-run object a version sees as `run.ctx` (or an awaitable of it)."""

Outcome = Literal["completed", "failed", "suspended", "released", "continued", "lost"]
"""What became of a run on record: the action it was transitioned by, or `lost`."""

_OUTCOMES: dict[str, Outcome] = {
    "complete": "completed",
    "fail": "failed",
    "suspend": "suspended",
    "release": "released",
    "continue": "continued",
}


class Held:
    """A run being executed: its claim, its execution and the scope that cancels it."""

    def __init__(self, claim: ClaimedRun, execution: Execution) -> None:
        self.claim = claim
        self.execution = execution
        self.scope = anyio.CancelScope()
        self.directive: RunDirective | None = None
        """Why the server stopped it (cancelled, claim lost): nothing more is written."""
        self.given_back = False
        """Stopped by its holder: released to the queue, with its records."""

    def direct(self, directive: RunDirective) -> None:
        """Follow the server's directive (a heartbeat's answer)."""
        if directive in (RunDirective.CONTINUE, RunDirective.PAUSE):
            # paused, it stops at its next task boundary; resumed before, it goes on
            self.execution.pause_requested = directive is RunDirective.PAUSE
        else:
            self.directive = directive
            self.scope.cancel()

    def give_back(self) -> None:
        """Stop the run now and release it (its completed task records go first)."""
        self.given_back = True
        self.scope.cancel()


class Runner:
    """Executes the claimed runs of `versions` through `client` and reports them.

    `on_refused` is told when the server refuses the client's API key: nothing can be
    written any more, and the holder stops.
    """

    def __init__(
        self,
        client: WorkerApi,
        versions: Sequence[ExecutableVersion],
        *,
        log: Logger,
        on_refused: Callable[[AuthenticationError], None],
        create_context: ContextFactory | None = None,
        write_retry_timeout: float = 90.0,
        interceptors: Sequence[Interceptor] = (),
        cancel_grace: float = 10.0,
        worker_id: str | None = None,
    ) -> None:
        self.client = client
        self.cancel_grace = cancel_grace
        self.worker_id = worker_id
        self.versions = {(v.workflow, v.version): v for v in versions}
        self.log = log
        self.on_refused = on_refused
        self.create_context = create_context
        self.write_retry_timeout = write_retry_timeout
        self.interceptors = tuple(interceptors)

    def hold(self, claim: ClaimedRun, spawn: Spawn, watch: Spawn | None = None) -> Held:
        """A claimed run, ready to execute; `spawn` starts its background record sends.

        `watch` starts the watch of a cancelled task's thread (default: `spawn`), which
        may outlive the run's execution.
        """
        run = claim.run
        log = self.log.child({"workflow": run.workflow, "version": run.version, "run_id": run.id})
        execution = Execution(
            self.client,
            claim,
            log,
            self.create_context,
            spawn,
            retry_within=self.write_retry_timeout,
            interceptors=self.interceptors,
            cancel_grace=self.cancel_grace,
            worker_id=self.worker_id,
            watch=watch,
        )
        return Held(claim, execution)

    async def execute(self, held: Held) -> Outcome | None:
        """Execute the run and report it; the outcome on record, or None if none could be.

        A run stopped by the server (`held.directive`) or taken from it by a 409 writes
        nothing more and is `lost`; a run given back is released with its records.
        """
        run = held.claim.run
        execution = held.execution
        log = execution.log
        version = self.versions.get((run.workflow, run.version))
        action: RunAction | None = None
        try:
            with held.scope:
                if version is None:  # the server never does this; defend anyway
                    raise LookupError(f"no version {run.workflow} {run.version} here")
                log.debug("run claimed", {"attempt": run.attempt, "revision": run.revision})
                info = RunExecutionInfo(run, held.claim.trace_context)
                action = await intercepted(
                    self.interceptors,
                    lambda i: i.execute_run,
                    info,
                    partial(version.execute, execution),
                )
        except ConflictError as exc:
            log.warn("claim lost; stopping the run", {"error": exc.message})
            return "lost"
        except RunInterrupt as exc:  # the run could not be written (server gone, claim lost)
            if isinstance(exc.__cause__, PayloadTooLargeError):  # no attempt can do better
                log.error("a task result is too large; the run fails", {"error": str(exc)})
                action = self.failure(run, exc.__cause__)
            else:
                log.warn("run abandoned; releasing it", {"error": str(exc)})
                action = ReleaseRun()
        except Exception as exc:  # a bug outside user code: fail the run, keep the worker
            log.error("run crashed the engine", {"error": repr(exc)})
            action = self.failure(run, exc)
        if held.scope.cancel_called:
            if held.directive is not None:
                log.info("run stopped", {"directive": held.directive.value})
                return "lost"
            if not held.given_back:  # stopped for good: nothing can be written
                return None
            if action is None:  # stopped before it was done (else its action goes)
                log.info("run given back; releasing it")
                action = ReleaseRun()
        assert action is not None, "a version's execution returns an action or raises"
        outcome = await self.send(held, action)
        log.debug("run reported", {"action": action.kind, "outcome": outcome})
        return outcome

    def failure(self, run: RunSummary, exc: Exception) -> FailRun:
        """The run fails with `exc` (sealed like any error of the run).

        An error the codec cannot seal fails the run all the same, with only its type
        in clear: the worker serves on, and nothing the codec should hide leaks.
        """
        error = ErrorInfo.from_exception(exc)
        try:
            return FailRun(error=error.seal(self.client.codec, CodecContext.run(run.id, "error")))
        except Exception as unsealable:
            self.log.error(
                "the run's error cannot be sealed; it fails with its type alone",
                {"run_id": run.id, "type": error.type, "codec_error": repr(unsealable)},
            )
            return FailRun(
                error=ErrorInfo(
                    type=error.type,
                    message="the error could not be sealed by the worker's codec",
                    retryable=False,
                    code=error.code,
                )
            )

    async def send(self, held: Held, action: RunAction) -> Outcome | None:
        """Report the run, with the task records its execution still holds; never raises.

        A report that cannot be sent (larger than the server takes, or not JSON: the
        run's result, or a task's) fails the run instead, with the records that fit
        beside the error. The outcome on record: `lost` if the run was taken away
        first, None if the report was given up (the claim goes idle, and another
        worker replays the run).
        """
        run = held.claim.run
        try:
            tasks = await held.execution.take_deferred()
            try:
                await self._report(held, action, tasks)
            except Exception as exc:
                if not unsendable(exc):
                    raise
                log = held.execution.log
                log.error("the report cannot be sent; the run fails", {"error": str(exc)})
                action = self.failure(run, exc)
                try:
                    await self._report(held, action, tasks)
                except Exception as again:
                    if not unsendable(again):
                        raise
                    await self._report(held, action, [])
        except ConflictError as exc:
            details = {"run_id": run.id, "error": exc.message}
            self.log.warn("run was taken away before it was reported", details)
            return "lost"
        except AuthenticationError as exc:
            self.on_refused(exc)
            return None
        except Exception as exc:  # given up: the claim goes idle, another worker replays it
            self.log.error("cannot report the run", {"run_id": run.id, "error": str(exc)})
            return None
        return _OUTCOMES[action.kind]

    async def _report(self, held: Held, action: RunAction, tasks: list[RecordTaskRequest]) -> None:
        run = held.claim.run
        request = TransitionRunRequest(revision=run.revision, action=action, tasks=tasks)
        await retried(
            lambda: self.client.transition(run.id, request),
            when=not_final,
            within=self.write_retry_timeout,
            log=held.execution.log,
            what="the run's report",
        )


async def heartbeats(
    client: WorkerApi,
    worker_id: str,
    held: Mapping[str, Held],
    *,
    interval: float,
    log: Logger,
    on_refused: Callable[[AuthenticationError], None],
) -> None:
    """Heartbeat the runs in `held` (read anew each beat) every `interval` seconds.

    Each answer's directive goes to its run. A failed beat is sent again soon (or when
    the server asks), so that a blip does not cost the claims a whole interval;
    returns when the server refuses the API key (after telling `on_refused`).
    """
    pause = interval
    while True:
        await anyio.sleep(pause)
        pause = interval
        leased = dict(held)
        leases = [
            RunLease(run_id=h.claim.run.id, revision=h.claim.run.revision) for h in leased.values()
        ]
        try:
            answer = await client.heartbeat(HeartbeatRequest(worker_id=worker_id, runs=leases))
        except AuthenticationError as exc:
            on_refused(exc)
            return
        except Exception as exc:  # the claims idle out if no beat passes for long
            asked = asked_wait(exc)
            pause = min(interval, HEARTBEAT_RETRY * interval if asked is None else asked)
            log.warn("heartbeat failed", {"error": str(exc), "again_in": pause})
            continue
        follow(answer.runs, leased, held)
