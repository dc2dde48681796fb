"""Remote task calls: a run's worker asks, the server pushes the attempt to a task endpoint.

`POST /runs/{run_id}/remote-tasks` carries one attempt of a task call of a claimed
run (fenced by the claim's revision, as a task record is). The server finds a task
endpoint of the run's namespace whose `serves` lists the task, pushes it a signed
`PushedTask` through the push client the dispatcher uses, and answers the endpoint's
`PushedTaskAnswer` as it came: the worker records the attempt as usual, and its retry
policy decides whether another push follows. Nothing of the call is stored here.

A push obeys the endpoint's health like the dispatcher's: not before its `retry_at`
(a back-off, or an open circuit's cool-off, whose single trial push one call takes),
at most `max_in_flight` at a time from this replica (a call waits up to `BUSY_WAIT`
seconds for one of them to end), and a failed one counts on its row.

Every way the call cannot reach a task (no endpoint serves it, each one is resting or
busy, the push failed) is answered as a failed attempt whose error is a
`ServerUnavailableError` naming the task and the endpoint: retryable, so the task's
policy tries it again. It is no error of the server's own (no 5xx: this server is
fine, and a worker reading a 503 would take it for its server being down). An answer
larger than a worker may send (the server's request limit) is the task's failure, not
the endpoint's: a final `PayloadTooLargeError`, as a local task's result would be.

The server waits for the answer for the task's timeout and a margin (the endpoint's
timeout when the task has none), and never longer than `MAX_WAIT_MS`: the worker's own
request gives up after 75 seconds.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import anyio
from pydantic import ValidationError

from aiki_core import ErrorInfo, PayloadTooLargeError, ServerUnavailableError
from aiki_core.wire import PushedTask, PushedTaskAnswer, to_millis
from aiki_server._clock import from_ms
from aiki_server._endpoints import list_endpoints
from aiki_server._lifecycle import claimed_run
from aiki_server._logs import component
from aiki_server._push_client import MAX_ANSWER_BYTES, PushClient
from aiki_server._push_health import (
    OPEN_AFTER,
    PushBackoff,
    record_failure,
    record_success,
    take_trial,
)

if TYPE_CHECKING:
    from aiki_core.wire import EndpointKind, RemoteTaskRequest
    from aiki_server._clock import Clock
    from aiki_server._endpoints import Endpoint
    from aiki_server._storage._database import Database, Tx

_log = component("remote-tasks")

KIND: EndpointKind = "tasks"
"""The endpoint kind task attempts are pushed to (the `kind` label of the push metrics)."""
MAX_WAIT_MS = 60_000
"""The longest the server waits for a task endpoint's answer."""
_MARGIN_MS = 5_000
"""Added to a task's timeout: the endpoint answers a timed-out attempt itself, then."""
BUSY_WAIT = 10.0
"""Seconds a call waits for a push in flight to end when every endpoint has its fill;
with `MAX_WAIT_MS`, still within the worker's 75 s."""


class _Unreachable(Exception):
    """The attempt cannot reach its task now; `retry_after` seconds may change that."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class _Busy(_Unreachable):
    """Every endpoint that may take a push has as many in flight as it takes."""


class RemoteTasks:
    """Pushes the task attempts of claimed runs to the task endpoints serving them."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        backoff: PushBackoff | None = None,
        client: PushClient | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._db = db
        self._clock = clock
        self._backoff = backoff or PushBackoff()
        self._max_answer_bytes = max_answer_bytes
        self._client = client or PushClient(max_answer_bytes=max_answer_bytes)
        self._in_flight: Counter[str] = Counter()
        """Endpoint id -> this replica's task pushes to it in flight."""
        self._freed = anyio.Event()
        """Set (and replaced) whenever one of those pushes ends."""
        self._health_writes = 0
        """How many times this replica wrote an endpoint's health: a waiting call reads
        its endpoints again only when it changed."""

    async def aclose(self) -> None:
        """Close the push client's connections."""
        await self._client.aclose()

    async def call(self, namespace: str, run_id: str, req: RemoteTaskRequest) -> PushedTaskAnswer:
        """Push one attempt to an endpoint serving the task; the endpoint's answer.

        A failed answer of this server's own when the attempt could not reach the task.
        """
        try:
            return await self._call(namespace, run_id, req)
        except _Unreachable as exc:
            error = ServerUnavailableError(exc.message, retry_after=exc.retry_after)
            info = ErrorInfo.from_exception(error, include_stack=False)
            return PushedTaskAnswer(status="failed", error=info)

    async def _call(self, namespace: str, run_id: str, req: RemoteTaskRequest) -> PushedTaskAnswer:
        async def serving(tx: Tx) -> list[Endpoint]:
            await claimed_run(tx, run_id, namespace, req.revision)
            return await _serving(tx, namespace, req.name)

        endpoint = await self._slot(namespace, req.name, await self._db.write(serving))
        self._in_flight[endpoint.id] += 1
        try:
            return await self._push(endpoint, run_id, req)
        finally:
            self._in_flight[endpoint.id] -= 1
            if not self._in_flight[endpoint.id]:
                del self._in_flight[endpoint.id]
            self._freed.set()
            self._freed = anyio.Event()

    async def _slot(self, namespace: str, task: str, endpoints: list[Endpoint]) -> Endpoint:
        """`_choose`, waiting up to `BUSY_WAIT` for a push to end while all are busy.

        After a wait the endpoints are read again when a push wrote their health
        meanwhile: it may have backed its endpoint off, or opened its circuit.
        """
        deadline = anyio.current_time() + BUSY_WAIT
        read_at = self._health_writes
        while True:
            if not endpoints:
                raise _Unreachable(
                    f"task {task!r}: no task endpoint of namespace {namespace!r} serves it"
                )
            freed = self._freed
            try:
                return await self._choose(task, endpoints)
            except _Busy:
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    raise
                with anyio.move_on_after(remaining):
                    await freed.wait()
            if read_at != self._health_writes:
                read_at = self._health_writes
                async with self._db.reader() as tx:
                    endpoints = await _serving(tx, namespace, task)

    async def _choose(self, task: str, endpoints: list[Endpoint]) -> Endpoint:
        """The least busy endpoint that may take a push now; else why none may."""
        now = self._clock()
        ready = [e for e in endpoints if e.retry_at is None or e.retry_at <= now]
        closed = [e for e in ready if e.failures < OPEN_AFTER]
        for endpoint in sorted(closed, key=lambda e: self._in_flight[e.id]):
            if self._in_flight[endpoint.id] < endpoint.max_in_flight:
                return endpoint
        for endpoint in ready:  # an open circuit whose cool-off is over: one trial push
            if endpoint.failures >= OPEN_AFTER and not self._in_flight[endpoint.id]:
                lease = endpoint.timeout_ms + self._backoff.cool_off_ms
                if await take_trial(self._db, endpoint.id, now, lease) is not None:
                    return endpoint
        if closed:
            names = ", ".join(f"{e.id} ({e.url})" for e in closed)
            raise _Busy(
                f"task {task!r}: its task endpoints are busy, each with as many pushes in"
                f" flight as it takes: {names}",
                retry_after=1,
            )
        resting = min(endpoints, key=lambda e: e.retry_at or now)
        failing_since = from_ms(resting.failing_since)
        since = "" if failing_since is None else f" since {failing_since.isoformat()}"
        raise _Unreachable(
            f"task {task!r}: task endpoint {resting.id} ({resting.url}) failing:"
            f" {resting.last_error or 'its pushes fail'}{since}",
            retry_after=max((resting.retry_at or now) - now, 0) / 1000,
        )

    async def _push(
        self, endpoint: Endpoint, run_id: str, req: RemoteTaskRequest
    ) -> PushedTaskAnswer:
        now = self._clock()
        what = f"task {req.name!r}: the push to task endpoint {endpoint.id} ({endpoint.url})"
        secrets = endpoint.active_secrets(now)
        if not secrets:
            await self._failed(endpoint, "no unexpired secret to sign with", None)
            raise _Unreachable(f"{what} has no unexpired secret to sign with")
        pushed = PushedTask(
            run_id=run_id,
            task_name=req.name,
            address=req.address,
            occurrence=req.occurrence,
            attempt=req.attempt,
            input=req.input,
            timeout=req.timeout,
        )
        wait_ms = endpoint.timeout_ms
        if req.timeout is not None:
            wait_ms = to_millis(req.timeout) + _MARGIN_MS
        result = await self._client.push(
            endpoint.url,
            pushed.model_dump_json().encode(),
            secrets,
            min(wait_ms, MAX_WAIT_MS) / 1000,
        )
        outcome: str = result.outcome
        error = result.error
        answer = None
        if result.ok:
            try:
                answer = PushedTaskAnswer.model_validate_json(result.answer)
            except ValidationError:
                outcome, error = "invalid", "HTTP 2xx without a pushed task answer"
        self._db.metrics.pushed(KIND, outcome, result.seconds)
        if result.outcome == "too_large":  # the endpoint answered: the result is too large
            too_large = PayloadTooLargeError(result.size, self._max_answer_bytes, "result")
            info = ErrorInfo.from_exception(too_large, include_stack=False)
            return PushedTaskAnswer(status="failed", error=info)
        if answer is None:
            assert error is not None
            await self._failed(endpoint, error, result.retry_after)
            raise _Unreachable(f"{what} failed: {error}", retry_after=result.retry_after)
        if endpoint.failures or endpoint.retry_at is not None:
            await record_success(self._db, endpoint.id)
            self._health_writes += 1
        return answer

    async def _failed(self, endpoint: Endpoint, error: str, retry_after: float | None) -> None:
        retry_after_ms = None if retry_after is None else int(retry_after * 1000)
        failures, _ = await record_failure(
            self._db, endpoint.id, self._clock(), error, retry_after_ms, self._backoff
        )
        self._health_writes += 1
        _log.warn(
            "a task push failed",
            {"endpoint_id": endpoint.id, "error": error, "failures": failures},
        )


async def _serving(tx: Tx, namespace: str, task: str) -> list[Endpoint]:
    """The namespace's task endpoints that serve `task`, as their rows are now."""
    return [e for e in await list_endpoints(tx, KIND, namespace) if task in e.tasks]
