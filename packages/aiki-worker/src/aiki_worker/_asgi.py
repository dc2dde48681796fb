"""`asgi_app`: a workflow endpoint, the serverless worker the server pushes runs to.

The server claims a run for the endpoint (as worker `endpoint:<id>`) and POSTs it, a
signed `PushedRun`. The app checks the signature before it reads anything else, then
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

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
from anyio.lowlevel import RunVar
from pydantic import ValidationError

from aiki_core import (
    AikiError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PayloadValidationError,
    PushSignatureError,
    ServerUnavailableError,
)
from aiki_core.push import PUSH_ID_HEADER, PushSecret, PushVerifier
from aiki_core.wire import PushedRun, PushedRunAnswer
from aiki_worker._running import ContextFactory, Outcome, Runner, heartbeats

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping, Sequence

    from aiki_core import Interceptor, Logger
    from aiki_core.sdk import ExecutableVersion, WorkerApi

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]

__all__ = ["PushedRunApp", "asgi_app"]

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
"""The largest pushed run read: a run's whole history (task results included) rides in it."""

_JSON = [(b"content-type", b"application/json")]


class _Refused(Exception):
    """A request answered with an error before any run starts."""

    def __init__(self, status: int, error: AikiError, headers: Sequence[tuple[bytes, bytes]] = ()):
        super().__init__(error.message)
        self.status = status
        self.error = error
        self.headers = list(headers)


class PushedRunApp:
    """The ASGI app `asgi_app` returns: executes the runs the server pushes to it."""

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
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        self.path = "/" + path.strip("/")
        self.workflows = tuple(workflows)
        self.served = {(v.workflow, v.version) for v in workflows}
        self.max_body_bytes = max_body_bytes
        self.heartbeat_interval = heartbeat_interval.total_seconds()
        self.answer_margin = answer_margin.total_seconds()
        self.verifier = PushVerifier(secrets, tolerance=signature_tolerance)
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection: pushed runs over HTTP; lifespan events are acknowledged."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] == "websocket":  # refused at once
            await send({"type": "websocket.close", "code": 1003})
            return
        if scope["type"] != "http":
            return
        runner = self._runner()
        try:
            answer = await self._serve(runner, scope, receive)
        except _Refused as refused:
            runner.log.warn(
                "push refused",
                {
                    "status": refused.status,
                    "error": refused.error.message,
                    "delivery_id": _headers(scope).get(PUSH_ID_HEADER, ""),
                },
            )
            await _respond(send, refused.status, refused.error.to_wire(), refused.headers)
            return
        except Exception as exc:  # a bug of the app: the request ends, the app serves on
            runner.log.error("the push crashed the endpoint", {"error": repr(exc)})
            await _respond(send, 500, AikiError("the endpoint failed").to_wire())
            return
        await _respond(send, 200, answer.model_dump(mode="json"))

    async def _serve(self, runner: Runner, scope: Scope, receive: Receive) -> PushedRunAnswer:
        path = _route(scope)
        if path != self.path:
            raise _Refused(404, NotFoundError("path", path))
        if scope.get("method") != "POST":
            error = InvalidRequestError(f"{scope.get('method')} is not served here; POST a run")
            raise _Refused(405, error, [(b"allow", b"POST")])
        headers = _headers(scope)
        body = await self._body(headers, receive)
        try:
            delivery_id = self.verifier.verify(headers, body)
        except PushSignatureError as exc:  # nothing is read, nothing runs
            raise _Refused(401, exc) from None
        try:
            pushed = PushedRun.model_validate_json(body)
        except ValidationError as exc:
            error = PayloadValidationError.from_pydantic("the pushed run is not valid", exc)
            raise _Refused(422, error) from None
        run = pushed.claim.run
        if (run.workflow, run.version) not in self.served:
            unknown = NotFoundError(
                "workflow version",
                f"{run.workflow} {run.version}",
                f"this endpoint does not serve {run.workflow} version {run.version}",
            )
            raise _Refused(404, unknown)
        log = runner.log.child({"delivery_id": delivery_id, "run_id": run.id})
        log.info("run pushed", {"revision": run.revision, "worker_id": pushed.worker_id})
        outcome = await self._execute(runner, pushed)
        if outcome is None:
            raise _Refused(
                503,
                ServerUnavailableError(
                    "the run's transition could not be put on record; it goes back to the"
                    " queue when its claim goes idle"
                ),
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

    async def _body(self, headers: dict[str, str], receive: Receive) -> bytes:
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _Refused(413, PayloadTooLargeError(int(declared), self.max_body_bytes))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refused(400, InvalidRequestError("the request ended before its body"))
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _Refused(413, PayloadTooLargeError(size, self.max_body_bytes))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


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


def _route(scope: Scope) -> str:
    """The request's path below the app's mount point (`root_path`)."""
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return "/" + path.strip("/")


def _headers(scope: Scope) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in scope.get("headers", ())
    }


async def _respond(
    send: Send, status: int, body: object, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON, (b"content-length", str(len(data)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
