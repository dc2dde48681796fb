"""`asgi_app`: a workflow endpoint, the serverless worker the server pushes runs to.

The server claims a run for the endpoint (as worker `endpoint:<id>`) and POSTs it, a
signed `PushedRun`. The app checks the signature before it parses the body, then
executes the run with the `Runner` a pulling `Worker` uses: it heartbeats the claim
while the run executes and follows the server's directives, writes task records and
the run's transition through its client, and answers `PushedRunAnswer` once the
transition is on record. A run still executing shortly before `answer_within` passes
is stopped and released, its completed task records first: a later push resumes it,
and those tasks replay from their records.

Plain ASGI (no web framework), so it is served by any ASGI server, mounted under any
ASGI framework, or run on AWS Lambda through `lambda_handler`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
from anyio.lowlevel import RunVar

from aiki_core import AuthenticationError, NotFoundError, ServerUnavailableError
from aiki_core.push import PushRefused, SignedPushApp
from aiki_core.wire import PushedRun, PushedRunAnswer
from aiki_worker._running import ContextFactory, Outcome, Runner, heartbeats

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from aiki_core import Interceptor, Logger
    from aiki_core.push import PushSecret
    from aiki_core.sdk import ExecutableVersion, WorkerApi

__all__ = ["PushedRunApp", "asgi_app"]

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
"""The largest pushed run read: a run's whole history (task results included) rides in it."""


class PushedRunApp(SignedPushApp):
    """The ASGI app `asgi_app` returns: a `SignedPushApp` executing the runs pushed to it."""

    def __init__(
        self,
        client: WorkerApi | Callable[[], WorkerApi],
        workflows: Sequence[ExecutableVersion],
        secrets: Sequence[str | PushSecret],
        *,
        path: str = "/",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        logger: Logger | None = None,
        interceptors: Sequence[Interceptor] = (),
        create_context: ContextFactory | None = None,
        heartbeat_interval: timedelta = timedelta(seconds=5),
        answer_margin: timedelta = timedelta(seconds=5),
        write_retry_timeout: timedelta = timedelta(seconds=90),
        signature_tolerance: timedelta = timedelta(minutes=5),
    ) -> None:
        if not workflows:
            raise ValueError("a workflow endpoint needs at least one workflow version")
        super().__init__(
            secrets,
            path=path,
            max_body_bytes=max_body_bytes,
            signature_tolerance=signature_tolerance,
        )
        self.workflows = tuple(workflows)
        self.served = {(v.workflow, v.version) for v in workflows}
        self.heartbeat_interval = heartbeat_interval.total_seconds()
        self.answer_margin = answer_margin.total_seconds()
        self._client = client
        self._logger = logger
        self._interceptors = tuple(interceptors)
        self._create_context = create_context
        self._write_retry_timeout = write_retry_timeout.total_seconds()
        self._runners: RunVar[Runner] = RunVar("aiki_worker_pushed_run_runner")
        """The runner of each event loop: a client's connections belong to the loop that
        opened them, and on AWS Lambda each invocation may run a loop of its own."""

    def _runner(self) -> Runner:
        try:
            return self._runners.get()
        except LookupError:
            pass
        client = self._client() if callable(self._client) else self._client
        log = (self._logger or client.log).child({"worker": "push endpoint"})
        runner = Runner(
            client,
            self.workflows,
            log=log,
            on_refused=lambda exc: log.error(
                "the server refused the API key; runs cannot be written", {"error": exc.message}
            ),
            create_context=self._create_context,
            write_retry_timeout=self._write_retry_timeout,
            interceptors=self._interceptors,
        )
        self._runners.set(runner)
        return runner

    def request_log(self) -> Logger:
        """The log of this event loop's runner."""
        return self._runner().log

    async def handle(self, body: bytes, delivery_id: str, log: Logger) -> PushedRunAnswer:
        """Execute the pushed run; its answer once its transition is on record."""
        pushed = self.parse(PushedRun, body, "the pushed run is not valid")
        run = pushed.claim.run
        if (run.workflow, run.version) not in self.served:
            unknown = NotFoundError(
                "workflow version",
                f"{run.workflow} {run.version}",
                f"this endpoint does not serve {run.workflow} version {run.version}",
            )
            raise PushRefused(unknown)
        log = log.child({"delivery_id": delivery_id, "run_id": run.id})
        log.info("run pushed", {"revision": run.revision, "worker_id": pushed.worker_id})
        outcome = await self._execute(self._runner(), pushed)
        if outcome is None:
            raise PushRefused(
                ServerUnavailableError(
                    "the run's transition could not be put on record; it goes back to the"
                    " queue when its claim goes idle"
                )
            )
        log.info("run answered", {"outcome": outcome})
        return PushedRunAnswer(run_id=run.id, outcome=outcome)

    async def _execute(self, runner: Runner, pushed: PushedRun) -> Outcome | None:
        run_id = pushed.claim.run.id
        answer_within = pushed.answer_within.total_seconds()
        # a short answer_within keeps three quarters of it for the run
        give_back_in = answer_within - min(self.answer_margin, answer_within / 4)
        async with anyio.create_task_group() as tg:
            held = runner.hold(pushed.claim, tg.start_soon)

            def refused(exc: AuthenticationError) -> None:
                runner.on_refused(exc)
                held.scope.cancel()  # nothing can be written: stop it

            async def give_back() -> None:
                await anyio.sleep(give_back_in)
                held.execution.log.warn("the answer is due soon; giving the run back")
                held.give_back()

            async def beat() -> None:
                await heartbeats(
                    runner.client,
                    pushed.worker_id,
                    {run_id: held},
                    interval=self.heartbeat_interval,
                    log=held.execution.log,
                    on_refused=refused,
                )

            tg.start_soon(beat)
            tg.start_soon(give_back)
            outcome = await runner.execute(held)
            tg.cancel_scope.cancel()
        return outcome


def asgi_app(
    client: WorkerApi | Callable[[], WorkerApi],
    workflows: Sequence[ExecutableVersion],
    secrets: Sequence[str | PushSecret],
    *,
    path: str = "/",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    logger: Logger | None = None,
    interceptors: Sequence[Interceptor] = (),
    create_context: ContextFactory | None = None,
    heartbeat_interval: timedelta = timedelta(seconds=5),
    answer_margin: timedelta = timedelta(seconds=5),
    write_retry_timeout: timedelta = timedelta(seconds=90),
    signature_tolerance: timedelta = timedelta(minutes=5),
) -> PushedRunApp:
    """A plain ASGI app that executes the runs of `workflows` the server pushes to it.

    `client` writes the runs (`aiki_client.Client`, or any `WorkerApi`); pass a
    function that makes one (`lambda: Client(url, api_key=...)`) where the event loop
    may change between requests (AWS Lambda): the app makes one client per loop.
    `secrets` are the endpoint's push secrets (`aiki_push_...`, two during a
    rotation); a request no secret signed is refused with 401 and nothing runs.

    Only `POST` on `path` is served; a body over `max_body_bytes` is refused (413), one
    that is not a pushed run too (422), and a run of a version not in `workflows` is
    refused with 404. The answer is `PushedRunAnswer`, once the run's transition is on
    record; a run still executing `answer_margin` before the push's `answer_within`
    passes (a quarter of it at most) is released, to resume on a later push. While a
    run executes it is heartbeaten every `heartbeat_interval`; `interceptors`,
    `create_context` and `write_retry_timeout` are `Worker`'s. A push signed more than
    `signature_tolerance` away from this clock, or delivered here before, is refused.
    """
    return PushedRunApp(
        client,
        workflows,
        secrets,
        path=path,
        max_body_bytes=max_body_bytes,
        logger=logger,
        interceptors=interceptors,
        create_context=create_context,
        heartbeat_interval=heartbeat_interval,
        answer_margin=answer_margin,
        write_retry_timeout=write_retry_timeout,
        signature_tolerance=signature_tolerance,
    )
