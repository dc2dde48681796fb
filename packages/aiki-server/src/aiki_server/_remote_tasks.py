"""Remote task calls: a run's worker asks, the server pushes the attempt to a task endpoint.

`POST /runs/{run_id}/remote-tasks` carries one attempt of a task call of a claimed
run (fenced by the claim's revision, as a task record is). The server finds a task
endpoint of the run's namespace whose `serves` lists the task, pushes it a signed
`PushedTask` through the push client the dispatcher uses, and answers the endpoint's
`PushedTaskAnswer` as it came when it comes within `wait` seconds (short attempts, in
process): the worker records the attempt as usual, and its retry policy decides
whether another push follows. Nothing of such a call is stored here.

A long attempt goes on without the worker: when `wait` passes, the attempt is
recorded as running and gets a `task_pushes` row (one transaction, fenced by the
claim), and the answer is `pending` (the worker suspends the run on it,
`awaiting_task`). The replica keeps its push going; when it ends, the attempt's
outcome is recorded by `write_task`, as a worker's record is (a failure by the retry
policy the request carried: `awaiting_retry` or `failed`), the row is deleted, and the
run, if it waits, is re-queued. A push that timed out is the task's timeout
(`TaskTimeoutError`). The row's lease covers the push; a row whose lease ran out (its
replica died) is pushed again by whichever replica sees it first (at least once: the
idempotency key is the same). A row deleted meanwhile (the run ended: a cancel) drops
the answer.

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

A push waits for the answer for the task's timeout and a margin (the endpoint's
timeout when the task has none); the worker's request waits at most `wait` seconds,
never more than `MAX_WAIT_MS`: the worker's own request gives up after 75 seconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from pydantic import ValidationError

from aiki_core import (
    ErrorInfo,
    PayloadTooLargeError,
    RetryPolicy,
    ServerUnavailableError,
    TaskStatus,
    TaskTimeoutError,
)
from aiki_core.wire import PushedTask, PushedTaskAnswer, RecordTaskRequest, to_millis
from aiki_server._clock import from_ms
from aiki_server._endpoints import list_endpoints
from aiki_server._lifecycle import TERMINAL, claimed_run, end_wait, lock_run
from aiki_server._logs import component
from aiki_server._push_client import MAX_ANSWER_BYTES, PushClient
from aiki_server._push_health import (
    OPEN_AFTER,
    PushBackoff,
    record_failure,
    record_success,
    take_trial,
)
from aiki_server._rows import dump, load
from aiki_server._waits import task_waits
from aiki_server._worker_writes import write_task

if TYPE_CHECKING:
    from pydantic import JsonValue

    from aiki_core.wire import EndpointKind, RemoteTaskRequest
    from aiki_server._clock import Clock
    from aiki_server._endpoints import Endpoint
    from aiki_server._limits import Limits
    from aiki_server._storage._database import Database, Row, Tx

_log = component("remote-tasks")

KIND: EndpointKind = "tasks"
"""The endpoint kind task attempts are pushed to (the `kind` label of the push metrics)."""
MAX_WAIT_MS = 60_000
"""The longest a worker's request waits for a task endpoint's answer (`wait`'s bound)."""
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


class _TimedOut(_Unreachable):
    """The endpoint did not answer within the push's wait: the attempt's timeout."""


_LEASE_CHECK = 1.0
"""Seconds between two looks for pushes whose replica's lease ran out."""


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One attempt to push: the call's fields, as the request or its row holds them."""

    run_id: str
    namespace: str
    name: str
    address: str
    occurrence: int
    attempt: int
    input: JsonValue
    timeout_ms: int | None
    retry: RetryPolicy | None
    retry_attempt: int

    @classmethod
    def of(cls, namespace: str, run_id: str, req: RemoteTaskRequest) -> _Attempt:
        return cls(
            run_id=run_id,
            namespace=namespace,
            name=req.name,
            address=req.address,
            occurrence=req.occurrence,
            attempt=req.attempt,
            input=req.input,
            timeout_ms=None if req.timeout is None else to_millis(req.timeout),
            retry=req.retry,
            retry_attempt=req.retry_attempt or req.attempt,
        )

    @classmethod
    def from_row(cls, row: Row) -> _Attempt:
        retry = row["retry"]
        return cls(
            run_id=row["run_id"],
            namespace=row["namespace"],
            name=row["task_name"],
            address=row["address"],
            occurrence=int(row["occurrence"]),
            attempt=int(row["attempt"]),
            input=load(row["input"]),
            timeout_ms=row["timeout_ms"],
            retry=None if retry is None else RetryPolicy.model_validate_json(retry),
            retry_attempt=int(row["retry_attempt"]),
        )

    @property
    def key(self) -> tuple[str, str, int, int]:
        """The row's primary key."""
        return self.run_id, self.address, self.occurrence, self.attempt


@dataclass(slots=True)
class _InFlight:
    """A push the worker's request waits for, until it is handed to its row."""

    answer: PushedTaskAnswer | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    detached: bool = False
    """The wait passed: the outcome goes to the row, not to the request."""
    handed: anyio.Event = field(default_factory=anyio.Event)
    """Set once the row is written (or could not be: `row` stays false)."""
    row: bool = False


def _unreachable(exc: _Unreachable) -> PushedTaskAnswer:
    """The failed answer of this server's own for an attempt that could not reach its task."""
    error = ServerUnavailableError(exc.message, retry_after=exc.retry_after)
    info = ErrorInfo.from_exception(error, include_stack=False)
    return PushedTaskAnswer(status="failed", error=info)


class RemoteTasks:
    """Pushes the task attempts of claimed runs to the task endpoints serving them."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        limits: Limits,
        *,
        wait: float = 20.0,
        backoff: PushBackoff | None = None,
        client: PushClient | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._db = db
        self._clock = clock
        self._limits = limits
        self._wait = wait
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
        self._pushes: anyio.abc.TaskGroup | None = None
        """Where pushes run, so that a long one outlives the request that started it."""

    async def aclose(self) -> None:
        """Close the push client's connections."""
        await self._client.aclose()

    async def run_forever(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Host the pushes, and push again those whose replica's lease ran out."""
        async with anyio.create_task_group() as self._pushes:
            task_status.started()
            while True:
                try:
                    await self._retake()
                except Exception as exc:
                    _log.error("a look for lapsed task pushes failed", {"error": repr(exc)})
                await anyio.sleep(_LEASE_CHECK)

    async def call(self, namespace: str, run_id: str, req: RemoteTaskRequest) -> PushedTaskAnswer:
        """Push one attempt to an endpoint serving the task; the endpoint's answer.

        A failed answer of this server's own when the attempt could not reach the task;
        `pending` when the answer is not back within the wait (the attempt goes on).
        """
        attempt = _Attempt.of(namespace, run_id, req)

        async def serving(tx: Tx) -> list[Endpoint]:
            await claimed_run(tx, run_id, namespace, req.revision)
            return await self._serving(tx, attempt)

        try:
            endpoints = await self._db.write(serving)
            endpoint = await self._slot(attempt.namespace, req.name, endpoints)
        except _Unreachable as exc:
            return _unreachable(exc)
        flight = _InFlight()
        self._start(endpoint, attempt, flight)
        with anyio.move_on_after(self._wait):
            await flight.done.wait()
        if flight.answer is not None:
            return flight.answer
        flight.detached = True
        try:
            await self._db.write(lambda tx: self._detach(tx, req, attempt, endpoint))
            flight.row = True
        finally:
            flight.handed.set()
        return PushedTaskAnswer(status="pending")

    async def _serving(self, tx: Tx, attempt: _Attempt) -> list[Endpoint]:
        """The task endpoints that serve the attempt's task; `_Unreachable` for none."""
        serving = await _serving(tx, attempt.namespace, attempt.name)
        if not serving:
            raise _none_serves(attempt.namespace, attempt.name)
        return serving

    async def _detach(
        self, tx: Tx, req: RemoteTaskRequest, attempt: _Attempt, endpoint: Endpoint
    ) -> None:
        """Record the attempt as running and give it its row: it goes on without the worker."""
        run = await claimed_run(tx, attempt.run_id, attempt.namespace, req.revision)
        now = self._clock()
        running = RecordTaskRequest(
            revision=req.revision,
            name=req.name,
            address=req.address,
            occurrence=req.occurrence,
            attempt=req.attempt,
            status=TaskStatus.RUNNING,
            input=req.input,
            retry=req.retry,
        )
        await write_task(tx, run, running, now, self._limits)
        await tx.execute(
            "INSERT INTO task_pushes (run_id, address, occurrence, attempt, namespace,"
            " task_name, input, timeout_ms, retry, retry_attempt, endpoint_id, lease_until,"
            " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            " ON CONFLICT DO NOTHING",
            *attempt.key,
            attempt.namespace,
            attempt.name,
            dump(attempt.input),
            attempt.timeout_ms,
            None if attempt.retry is None else attempt.retry.model_dump_json(),
            attempt.retry_attempt,
            endpoint.id,
            now + self._lease_ms(attempt, endpoint),
            now,
        )

    def _push_ms(self, attempt: _Attempt, endpoint: Endpoint) -> int:
        """How long a push of the attempt waits for its answer."""
        if attempt.timeout_ms is None:
            return endpoint.timeout_ms
        return attempt.timeout_ms + _MARGIN_MS

    def _lease_ms(self, attempt: _Attempt, endpoint: Endpoint) -> int:
        """How long a replica holds a row it pushes: the push, and a margin."""
        return self._push_ms(attempt, endpoint) + _MARGIN_MS

    def _start(self, endpoint: Endpoint, attempt: _Attempt, flight: _InFlight) -> None:
        """Start pushing the attempt, counted in flight at once (a slot `_choose` sees)."""
        assert self._pushes is not None, "pushes run in the app's lifespan"
        self._in_flight[endpoint.id] += 1
        self._pushes.start_soon(self._push_attempt, endpoint, attempt, flight)

    async def _push_attempt(self, endpoint: Endpoint, attempt: _Attempt, flight: _InFlight) -> None:
        """Push the attempt; hand its answer to the waiting request, or record it."""
        try:
            answer = await self._push(endpoint, attempt)
        except _TimedOut as exc:
            answer = _unreachable(exc)
            if flight.detached:  # no answer within the task's timeout (and a margin)
                timeout_ms = attempt.timeout_ms or endpoint.timeout_ms
                error = TaskTimeoutError(attempt.run_id, attempt.name, attempt.attempt, timeout_ms)
                info = ErrorInfo.from_exception(error, include_stack=False)
                answer = PushedTaskAnswer(status="failed", error=info)
        except _Unreachable as exc:
            answer = _unreachable(exc)
        except Exception as exc:  # the push's own writes failed
            _log.error("a task push failed unexpectedly", {"error": repr(exc)})
            if flight.detached:
                return  # its row's lapsed lease retakes it
            # the waiting request answers now, with a failure its policy retries
            answer = _unreachable(_Unreachable(f"task {attempt.name!r}: the push failed here"))
        finally:
            self._in_flight[endpoint.id] -= 1
            if not self._in_flight[endpoint.id]:
                del self._in_flight[endpoint.id]
            self._freed.set()
            self._freed = anyio.Event()
        if not flight.detached:
            flight.answer = answer
            flight.done.set()
            return
        await flight.handed.wait()
        if flight.row:
            await self._settle(attempt, answer)

    async def _settle(self, attempt: _Attempt, answer: PushedTaskAnswer) -> None:
        """Record a long attempt's outcome, as its worker would have; re-queue its run.

        A failure to write it is logged: the row stays, and its lapsed lease retakes it.
        """

        async def record(tx: Tx) -> None:
            # the run first, then its row, as a cancel takes them: else each waits for
            # the other (PostgreSQL)
            run = await lock_run(tx, attempt.run_id, attempt.namespace)
            deleted = await tx.fetch(
                "DELETE FROM task_pushes WHERE run_id = $1 AND address = $2"
                " AND occurrence = $3 AND attempt = $4 RETURNING run_id",
                *attempt.key,
            )
            if not deleted or run is None or run["status"] in TERMINAL:
                return  # the run ended (a cancel deletes its rows): the answer is dropped
            task = await tx.fetchrow(
                "SELECT t.run_attempt, a.status FROM tasks t JOIN task_attempts a"
                " ON a.task_id = t.id AND a.attempt = $4"
                " WHERE t.run_id = $1 AND t.address = $2 AND t.occurrence = $3",
                *attempt.key,
            )
            assert task is not None  # written with the row
            if task["status"] != TaskStatus.RUNNING:
                # its worker recorded it (it lost the `pending` answer): the answer is
                # dropped, or it fails to record for good and the row is pushed forever
                return
            now = self._clock()
            # it counts in the run attempt that made it, though the run failed and went
            # on to its next one meanwhile: that one runs a call failed before again
            made_in = {**run, "attempt": task["run_attempt"]}
            await write_task(tx, made_in, _outcome(attempt, answer, run), now, self._limits)
            # a run that failed meanwhile (its workflow's retry back-off) does not wait for it
            if (attempt.address, attempt.occurrence) in task_waits(run):
                await end_wait(tx, run, now, f"task {attempt.name!r} answered")

        try:
            await self._db.write(record)
        except Exception as exc:
            _log.error("recording a task push's answer failed", {"error": repr(exc)})

    async def _retake(self) -> None:
        """Push again every row whose lease ran out (its replica died), once per lapse."""
        now = self._clock()
        async with self._db.reader() as tx:
            rows = await tx.fetch(
                "SELECT * FROM task_pushes WHERE lease_until < $1 ORDER BY lease_until LIMIT 100",
                now,
            )
        for row in rows:
            attempt = _Attempt.from_row(row)
            try:
                async with self._db.reader() as tx:
                    endpoints = await self._serving(tx, attempt)
                preferred = [e for e in endpoints if e.id == row["endpoint_id"]]
                endpoint = await self._choose(attempt.name, preferred or endpoints)
            except _Busy:
                continue  # the next look tries it again
            except _Unreachable as exc:
                if await self._take(row, _MARGIN_MS):
                    await self._settle(attempt, _unreachable(exc))
                continue
            if await self._take(row, self._lease_ms(attempt, endpoint)):
                _log.info(
                    "pushing a task attempt again: its replica's lease ran out",
                    {"run_id": attempt.run_id, "task": attempt.name, "attempt": attempt.attempt},
                )
                flight = _InFlight(detached=True, row=True)
                flight.handed.set()
                self._start(endpoint, attempt, flight)

    async def _take(self, row: Row, lease_ms: int) -> bool:
        """Take a lapsed row for this replica (leased from now); whether no other took it first."""

        async def take(tx: Tx) -> bool:
            taken = await tx.fetch(
                "UPDATE task_pushes SET lease_until = $5 WHERE run_id = $1 AND address = $2"
                " AND occurrence = $3 AND attempt = $4 AND lease_until = $6 RETURNING run_id",
                row["run_id"],
                row["address"],
                row["occurrence"],
                row["attempt"],
                self._clock() + lease_ms,
                row["lease_until"],
            )
            return bool(taken)

        return await self._db.write(take)

    async def _slot(self, namespace: str, task: str, endpoints: list[Endpoint]) -> Endpoint:
        """`_choose`, waiting up to `BUSY_WAIT` for a push to end while all are busy.

        After a wait the endpoints are read again when a push wrote their health
        meanwhile: it may have backed its endpoint off, or opened its circuit.
        """
        deadline = anyio.current_time() + BUSY_WAIT
        read_at = self._health_writes
        while True:
            if not endpoints:
                raise _none_serves(namespace, task)
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

    async def _push(self, endpoint: Endpoint, attempt: _Attempt) -> PushedTaskAnswer:
        now = self._clock()
        what = f"task {attempt.name!r}: the push to task endpoint {endpoint.id} ({endpoint.url})"
        secrets = endpoint.active_secrets(now)
        if not secrets:
            await self._failed(endpoint, "no unexpired secret to sign with", None)
            raise _Unreachable(f"{what} has no unexpired secret to sign with")
        timeout = attempt.timeout_ms
        pushed = PushedTask(
            run_id=attempt.run_id,
            task_name=attempt.name,
            address=attempt.address,
            occurrence=attempt.occurrence,
            attempt=attempt.attempt,
            input=attempt.input,
            timeout=None if timeout is None else timedelta(milliseconds=timeout),
        )
        result = await self._client.push(
            endpoint.url,
            pushed.model_dump_json().encode(),
            secrets,
            self._push_ms(attempt, endpoint) / 1000,
        )
        outcome: str = result.outcome
        error = result.error
        answer = None
        if result.ok:
            try:
                answer = PushedTaskAnswer.model_validate_json(result.answer)
            except ValidationError:
                answer = None
            if answer is None or answer.status == "pending":  # pending is no endpoint's answer
                outcome, error, answer = "invalid", "HTTP 2xx without a pushed task answer", None
        self._db.metrics.pushed(KIND, outcome, result.seconds)
        if result.outcome == "too_large":  # the endpoint answered: the result is too large
            too_large = PayloadTooLargeError(result.size, self._max_answer_bytes, "result")
            info = ErrorInfo.from_exception(too_large, include_stack=False)
            return PushedTaskAnswer(status="failed", error=info)
        if answer is None:
            assert error is not None
            await self._failed(endpoint, error, result.retry_after)
            unreachable = _TimedOut if result.outcome == "timeout" else _Unreachable
            raise unreachable(f"{what} failed: {error}", retry_after=result.retry_after)
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


def _none_serves(namespace: str, task: str) -> _Unreachable:
    return _Unreachable(f"task {task!r}: no task endpoint of namespace {namespace!r} serves it")


async def _serving(tx: Tx, namespace: str, task: str) -> list[Endpoint]:
    """The namespace's task endpoints that serve `task`, as their rows are now."""
    return [e for e in await list_endpoints(tx, KIND, namespace) if task in e.tasks]


def _outcome(attempt: _Attempt, answer: PushedTaskAnswer, run: Row) -> RecordTaskRequest:
    """The record of a long attempt's answer: a failure by the policy the call sent."""
    status, error, delay = TaskStatus.COMPLETED, None, None
    if answer.status != "completed":
        error = answer.error or ErrorInfo(type="AikiError", message="failed without an error")
        policy = attempt.retry or RetryPolicy.never()
        delay = policy.delay_after(attempt.retry_attempt) if error.retryable else None
        status = TaskStatus.FAILED if delay is None else TaskStatus.AWAITING_RETRY
    return RecordTaskRequest(
        revision=run["revision"],
        name=attempt.name,
        address=attempt.address,
        occurrence=attempt.occurrence,
        attempt=attempt.attempt,
        status=status,
        input=attempt.input,
        retry=attempt.retry,
        result=answer.result if error is None else None,
        error=error,
        retry_delay=delay,
    )
