"""The server's Prometheus metrics, served at `GET /metrics`.

Each app has its own registry (not `prometheus_client`'s global one): every replica
exports what it did, and a process that holds several apps (tests) keeps them apart.
Labels are bounded: workflow, version, pool, task name, status, route template,
endpoint kind and push outcome (never an endpoint's URL); namespace only when the
operator asks for it (`namespace_label`).

What a write transaction did is counted once it has committed: the code inside it
notes an effect (`Tx.observe`), and `Database.write` applies the notes after the
commit, so a transaction that is rolled back and run again counts once. The state
of the queues is read at scrape time, by one grouped query (`refresh`).
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.utils import floatToGoString

from aiki_core.wire import RUN_WAITING_STATUSES

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from prometheus_client.metrics_core import Metric
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = CONTENT_TYPE_LATEST
ROUTE_SCOPE_KEY = "aiki.route"
"""Scope key of the route template of a request answered outside the router (`HotPath`)."""
CLIENT_LEFT = 499
"""The status a request is counted with when its caller left before the answer."""

_SHORT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LONG = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted by name; any other (a client may send any token) counts as `other`."""
_MAX_GROUPS = 1000
"""At most this many (workflow, version, pool, status) groups are read per scrape."""


class Metrics:
    """The metrics of one server app, in its own registry."""

    def __init__(self, *, namespace_label: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.namespace_label = namespace_label
        run = ("namespace", "workflow", "version") if namespace_label else ("workflow", "version")
        tally = _Tallies()
        self._runs_started = tally.counter(
            "aiki_runs_started", "Runs started (queued or scheduled).", run
        )
        self._runs_ended = tally.counter(
            "aiki_runs_ended", "Runs that ended, by final status.", (*run, "status")
        )
        self._run_duration = tally.histogram(
            "aiki_run_duration_seconds", "From a run's start to its end.", (*run, "status"), _LONG
        )
        self._task_attempts = tally.counter(
            "aiki_task_attempts",
            "Task attempts that ended: outcome completed, retry (awaiting_retry) or failed.",
            ("task", "outcome"),
        )
        self._task_duration = tally.histogram(
            "aiki_task_attempt_duration_seconds",
            "From a task attempt's start to its end.",
            ("task", "outcome"),
            _SHORT,
        )
        self._claim_latency = tally.histogram(
            "aiki_claim_latency_seconds",
            "How long a run waited queued before a worker claimed it.",
            run,
            _SHORT,
        )
        self._timer_failed_passes = tally.counter(
            "aiki_timer_failed_passes", "Timer daemon passes that failed whole.", ()
        )
        self._timer_lag = tally.histogram(
            "aiki_timer_lag_seconds",
            "How late the timer daemon moved a due row, by kind (wake-up, deadline, ...).",
            ("kind",),
            _SHORT,
        )
        self._pushes = tally.counter(
            "aiki_pushes",
            "Pushes to endpoints, by endpoint kind and outcome (ok, refused: a non-2xx"
            " answer, timeout, connection, too_large, invalid: a 2xx answer that is not one,"
            " error: the server's own failure).",
            ("kind", "outcome"),
        )
        self._push_duration = tally.histogram(
            "aiki_push_duration_seconds",
            "From a push's request to its answer (or failure), by endpoint kind and outcome.",
            ("kind", "outcome"),
            _SHORT,
        )
        self._http_requests = tally.counter(
            "aiki_http_requests",
            "HTTP requests answered, by route template and status.",
            ("method", "route", "status"),
        )
        self._http_duration = tally.histogram(
            "aiki_http_request_duration_seconds",
            "HTTP request latency, long-polls included.",
            ("method", "route"),
            _SHORT,
        )
        self._channels = tally.counter(
            "aiki_channels",
            "Worker channels opened and closed, by event (opened, closed: the worker left or"
            " the connection dropped, refused: an opening refused, revoked: closed for a"
            " revoked key, invalid: closed for a frame that did not parse). Open channels:"
            " opened minus the rest but refused.",
            ("event",),
        )
        self._channel_calls = tally.counter(
            "aiki_channel_calls",
            "Calls that came on client channels (each is also counted as an HTTP request).",
            (),
        )
        self._deleted = tally.counter(
            "aiki_retention_deleted",
            "Rows the retention daemon deleted: ended runs past their retention (with"
            " everything they held), and workers not seen for a while.",
            ("kind",),
        )
        self._tx_duration = tally.histogram(
            "aiki_db_transaction_duration_seconds",
            "Write transactions, from BEGIN to COMMIT (each attempt).",
            (),
            _SHORT,
        )
        self._tx_retries = tally.counter(
            "aiki_db_transaction_retries",
            "Write transactions run again after a transient error.",
            (),
        )
        self._tx_errors = tally.counter(
            "aiki_db_transaction_errors",
            "Write transactions that failed with a database error (after their retries).",
            (),
        )
        self.registry.register(tally)
        self._state = _StateCollector(namespace_label)
        self.registry.register(self._state)

    def _run_labels(self, run: Mapping[str, Any]) -> tuple[str, ...]:
        if self.namespace_label:
            return (run["namespace"], run["workflow"], run["version"])
        return (run["workflow"], run["version"])

    def run_started(self, run: Mapping[str, Any]) -> None:
        """A run was inserted."""
        self._runs_started.inc(self._run_labels(run))

    def run_ended(self, run: Mapping[str, Any], status: str, now: int) -> None:
        """A run reached the terminal `status` at `now` (epoch ms)."""
        labels = (*self._run_labels(run), status)
        self._runs_ended.inc(labels)
        self._run_duration.observe(labels, max(now - run["created_at"], 0) / 1000)

    def run_claimed(self, run: Mapping[str, Any], now: int) -> None:
        """A queued run was claimed at `now`."""
        waited = max(now - run["ready_at"], 0) / 1000
        self._claim_latency.observe(self._run_labels(run), waited)

    def task_attempt(self, task: str, outcome: str, seconds: float) -> None:
        """A task attempt ended with `outcome` after `seconds`."""
        self._task_attempts.inc((task, outcome))
        self._task_duration.observe((task, outcome), seconds)

    def timer_moved(self, kind: str, late_ms: int) -> None:
        """The timer daemon moved a row of `kind` `late_ms` after it was due."""
        self._timer_lag.observe((kind,), max(late_ms, 0) / 1000)

    def timer_pass_failed(self) -> None:
        """A timer pass failed whole."""
        self._timer_failed_passes.inc(())

    def pushed(self, kind: str, outcome: str, seconds: float | None = None) -> None:
        """A push to an endpoint of `kind` ended with `outcome` after `seconds`.

        `seconds` is `None` for a push that failed in the server before its request.
        """
        self._pushes.inc((kind, outcome))
        if seconds is not None:
            self._push_duration.observe((kind, outcome), seconds)

    def retention_deleted(self, kind: str, count: int) -> None:
        """The retention daemon deleted `count` rows of `kind` (`runs`, `workers`)."""
        if count:
            self._deleted.inc((kind,), count)

    def transaction(self, seconds: float) -> None:
        """A write transaction attempt ended (committed or not) after `seconds`."""
        self._tx_duration.observe((), seconds)

    def transaction_retried(self) -> None:
        """A write transaction is run again after a transient error."""
        self._tx_retries.inc(())

    def transaction_failed(self) -> None:
        """A write transaction failed with a database error, for good."""
        self._tx_errors.inc(())

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """An HTTP request was answered."""
        named = method if method in _METHODS else "other"
        self._http_requests.inc((named, route, str(status)))
        self._http_duration.observe((named, route), seconds)

    def channel(self, event: str) -> None:
        """A client channel was opened, closed or refused (see `aiki_channels`)."""
        self._channels.inc((event,))

    def channel_call(self) -> None:
        """A call came on a client channel."""
        self._channel_calls.inc(())

    async def exposition(self, reader: Any, now: int, active_within_ms: int) -> bytes:
        """The text exposition, with the queues as the database `reader` sees them now."""
        async with reader as tx:
            self._state.rows = await tx.fetch(self._state.query, _MAX_GROUPS)
            workers = await tx.fetchrow(
                "SELECT COUNT(*) AS n FROM workers WHERE last_seen_at >= $1",
                now - active_within_ms,
            )
        self._state.now = now
        self._state.workers = 0 if workers is None else int(workers["n"])
        return generate_latest(self.registry)


class _Counter:
    """A counter family: a running total per tuple of label values."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        # a family without labels has its one sample from the start, at 0
        self.totals: dict[tuple[str, ...], float] = {} if labels else {(): 0}

    def inc(self, labels: tuple[str, ...], amount: int = 1) -> None:
        self.totals[labels] = self.totals.get(labels, 0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, total in self.totals.items():
            family.add_metric(labels, total)
        return family


class _Histogram:
    """A histogram family: per tuple of label values, a count per bucket and a sum."""

    def __init__(
        self, name: str, documentation: str, labels: tuple[str, ...], bounds: tuple[float, ...]
    ) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.bounds = bounds
        self.rows: dict[tuple[str, ...], list[float]] = {}
        """Label values -> the count of each bucket (`+Inf` last), then the sum."""
        if not labels:  # its one sample from the start, empty
            self.rows[()] = [0.0] * (len(bounds) + 2)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        row = self.rows.get(labels)
        if row is None:
            row = self.rows[labels] = [0.0] * (len(self.bounds) + 2)
        row[bisect_left(self.bounds, value)] += 1  # buckets are `le`: a bound holds its value
        row[-1] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        les = [*map(floatToGoString, self.bounds), "+Inf"]
        for labels, row in self.rows.items():
            buckets = list(zip(les, accumulate(row[:-1]), strict=True))
            family.add_metric(labels, buckets, sum_value=row[-1])
        return family


class _Tallies:
    """The counters and histograms the server updates as it works, exported per scrape.

    Kept in plain dictionaries rather than `prometheus_client`'s metric objects:
    every task record and transition updates several of them, and those objects
    validate labels and take a lock on each update, a cost the hot path would pay
    per request. The server updates them from its one event loop thread.
    """

    def __init__(self) -> None:
        self._families: list[_Counter | _Histogram] = []

    def counter(self, name: str, documentation: str, labels: tuple[str, ...]) -> _Counter:
        counter = _Counter(name, documentation, labels)
        self._families.append(counter)
        return counter

    def histogram(
        self, name: str, documentation: str, labels: tuple[str, ...], bounds: tuple[float, ...]
    ) -> _Histogram:
        histogram = _Histogram(name, documentation, labels, bounds)
        self._families.append(histogram)
        return histogram

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.family()


def grouped_runs_query(
    keys: Sequence[str], statuses: Sequence[str], *, in_namespace: bool = False
) -> str:
    """SQL counting the runs in `statuses` per `keys` and status (`n`), oldest first ready.

    The queue gauges read through it, and so do the dashboard's queues; `oldest` is
    the group's least `ready_at`. `$1` is the most groups to return; with
    `in_namespace`, `$2` is the namespace. `keys` and `statuses` are the server's own
    names, never input.
    """
    columns = ", ".join(keys)
    listed = ", ".join(f"'{status}'" for status in statuses)
    where = f"status IN ({listed})" + (" AND namespace = $2" if in_namespace else "")
    return (
        f"SELECT {columns}, status, COUNT(*) AS n, MIN(ready_at) AS oldest FROM runs"
        f" WHERE {where} GROUP BY {columns}, status LIMIT $1"
    )


class _StateCollector:
    """Queue depth, oldest queued age, runs waiting and active workers, read per scrape."""

    def __init__(self, namespace_label: bool) -> None:
        self.keys = (
            ["namespace", "workflow", "version", "pool"]
            if namespace_label
            else [
                "workflow",
                "version",
                "pool",
            ]
        )
        waiting = [s.value for s in sorted(RUN_WAITING_STATUSES)]
        self.query = grouped_runs_query(self.keys, ["queued", *waiting])
        self.rows: Sequence[Mapping[str, Any]] = []
        self.now = 0
        self.workers = 0

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("aiki_queue_depth", "Runs queued for a worker.", labels=self.keys)
        oldest = GaugeMetricFamily(
            "aiki_queue_oldest_age_seconds",
            "How long the oldest queued run has waited.",
            labels=self.keys,
        )
        waiting: dict[str, int] = {s.value: 0 for s in RUN_WAITING_STATUSES}
        for row in self.rows:
            if row["status"] == "queued":
                labels = [str(row[key]) for key in self.keys]
                depth.add_metric(labels, row["n"])
                oldest.add_metric(labels, max(self.now - int(row["oldest"]), 0) / 1000)
            else:
                waiting[row["status"]] += int(row["n"])
        by_kind = GaugeMetricFamily(
            "aiki_runs_waiting", "Runs suspended, by what they wait for.", labels=["kind"]
        )
        for kind, count in sorted(waiting.items()):
            by_kind.add_metric([kind], count)
        yield depth
        yield oldest
        yield by_kind
        yield GaugeMetricFamily(
            "aiki_workers_active",
            "Workers seen within the claim idle timeout.",
            value=self.workers,
        )


class HttpMetrics:
    """Counts each HTTP request by method, route template and status, with its latency.

    The outermost layer of HTTP requests (a client channel's calls pass through it too),
    so refused requests (401, 413) count too, and one whose caller left before the
    answer (a channel closed under a long-poll) counts as 499. The route is
    the template the router matched (`/api/v1/runs/{run_id}`), never the raw path;
    a request no route matched (an unknown path, or one refused before routing)
    counts as `unmatched`, and a method outside the standard ones as `other`.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, prefixes: Mapping[int, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.prefixes = prefixes
        """The prefix of the router each route (by `id`) is included under."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; count it when it has been answered."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except anyio.get_cancelled_exc_class():
            status = CLIENT_LEFT  # not the server's failure: its caller left (a channel closed)
            raise
        finally:
            seconds = perf_counter() - started
            self.metrics.http_request(scope["method"], self._route(scope), status, seconds)

    def _route(self, scope: Scope) -> str:
        template: str | None = scope.get(ROUTE_SCOPE_KEY)
        if template is not None:
            return template
        route = scope.get("route")
        if route is None:
            return "unmatched"
        # FastAPI may hand over the included router's own route, whose path lacks the prefix
        return self.prefixes.get(id(route), "") + str(route.path)
