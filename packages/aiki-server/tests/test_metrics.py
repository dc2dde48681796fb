"""`GET /metrics`: what the counters say after a known workload, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from prometheus_client.parser import text_string_to_metric_families

from aiki_server._starts import insert_run
from aiki_server.testing import embedded_server
from server_api import (
    FAR_FUTURE,
    START_MS,
    claim_one,
    start,
    task_record,
    timer_pass,
    transition,
)

if TYPE_CHECKING:
    import pytest
    from fastapi import FastAPI

    from aiki_server._storage._database import Tx
    from server_api import Harness, HarnessFactory

DASHBOARD = Path(__file__).parents[3] / "docs" / "assets" / "grafana-dashboard.json"

Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(client: httpx.AsyncClient) -> Samples:
    """Every sample of the app's `/metrics`, by sample name (`_total`, `_count` included)."""
    r = await client.get("http://aiki/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(v for got, v in samples.get(name, []) if labels.items() <= got.items())


async def run_to_end(c: httpx.AsyncClient, *, fail: bool) -> None:
    """Claim a run of `w` 1 and run its task `charge`: once to completion, or to failure."""
    claimed = await claim_one(c)
    run_id, revision = claimed["run"]["id"], claimed["run"]["revision"]
    error = {"type": "ValueError", "message": "no"}
    records = (
        [
            task_record(
                revision, status="awaiting_retry", result=None, error=error, retry_at=FAR_FUTURE
            ),
            task_record(revision, status="failed", attempt=2, result=None, error=error),
        ]
        if fail
        else [task_record(revision)]
    )
    for record in records:
        r = await c.post(f"/runs/{run_id}/tasks", json=record)
        assert r.status_code == 200, r.text
    action: dict[str, Any] = (
        {"kind": "fail", "error": error} if fail else {"kind": "complete", "result": 1}
    )
    r = await transition(c, run_id, revision, action)
    assert r.status_code == 200, r.text


async def test_ten_runs_two_failures(harness: Harness) -> None:
    c = harness.client
    for _ in range(10):
        await start(c)
    harness.clock.advance(2_000)  # every run waited 2 s in the queue
    for n in range(10):
        await run_to_end(c, fail=n < 2)
    await start(c, workflow="other", version="2", pool="gpu")
    sleeper = await start(c, workflow="nap")
    claimed = await claim_one(c, "nap")
    sleep = {"kind": "sleep", "name": "s", "occurrence": 0, "wake_at": FAR_FUTURE}
    r = await transition(
        c, sleeper["id"], claimed["run"]["revision"], {"kind": "suspend", "waits": [sleep]}
    )
    assert r.status_code == 200, r.text
    harness.clock.advance(5_000)
    r = await c.get(f"/runs/{sleeper['id']}")
    assert r.status_code == 200

    m = await scrape(c)
    assert value(m, "aiki_runs_started_total", workflow="w", version="1") == 10
    assert value(m, "aiki_runs_started_total") == 12
    assert value(m, "aiki_runs_ended_total", workflow="w", status="completed") == 8
    assert value(m, "aiki_runs_ended_total", workflow="w", status="failed") == 2
    assert value(m, "aiki_runs_ended_total") == 10
    assert value(m, "aiki_run_duration_seconds_count", status="completed") == 8
    assert value(m, "aiki_run_duration_seconds_sum", status="completed") == 8 * 2.0
    assert value(m, "aiki_task_attempts_total", task="charge", outcome="completed") == 8
    assert value(m, "aiki_task_attempts_total", task="charge", outcome="retry") == 2
    assert value(m, "aiki_task_attempts_total", task="charge", outcome="failed") == 2
    assert value(m, "aiki_task_attempt_duration_seconds_count", task="charge") == 12
    assert value(m, "aiki_claim_latency_seconds_count", workflow="w") == 10
    assert value(m, "aiki_claim_latency_seconds_sum", workflow="w") == 10 * 2.0
    # the state, read at scrape time
    queued = {"workflow": "other", "version": "2", "pool": "gpu"}
    assert m["aiki_queue_depth"] == [(queued, 1.0)]
    assert m["aiki_queue_oldest_age_seconds"] == [(queued, 5.0)]
    assert value(m, "aiki_runs_waiting", kind="sleeping") == 1
    assert value(m, "aiki_runs_waiting", kind="awaiting_event") == 0
    assert value(m, "aiki_workers_active") == 1
    # the routes are templates, never raw paths
    routes = {labels["route"] for labels, _ in m["aiki_http_requests_total"]}
    assert {
        "/api/v1/runs",
        "/api/v1/claims",
        "/api/v1/runs/{run_id}",
        "/api/v1/runs/{run_id}/tasks",
        "/api/v1/runs/{run_id}/transition",
    } <= routes
    assert not any(sleeper["id"] in route for route in routes)
    posts = value(
        m,
        "aiki_http_requests_total",
        method="POST",
        route="/api/v1/runs/{run_id}/transition",
        status="200",
    )
    assert posts == 11
    assert value(m, "aiki_http_requests_total", route="/api/v1/runs", status="201") == 12
    assert value(m, "aiki_db_transaction_duration_seconds_count") > 0
    assert value(m, "aiki_db_transaction_retries_total") == 0
    assert value(m, "aiki_db_transaction_errors_total") == 0


async def test_the_timer_lag_is_how_late_a_due_row_moved(harness: Harness) -> None:
    await start(harness.client, delay=1_000)  # scheduled: wake-ups due in 1 and 2.5 s
    await start(harness.client, delay=2_500)
    harness.clock.advance(3_000)
    await timer_pass(harness)  # 2 and 0.5 s late, whichever pass moves them
    # the app's own timer daemon may have taken one of the rows (SKIP LOCKED) in a pass
    # of its own, which counts once it commits
    with anyio.fail_after(10):
        while value(m := await scrape(harness.client), "aiki_timer_lag_seconds_count") < 2:  # noqa: ASYNC110 - polls metrics
            await anyio.sleep(0.01)
    assert value(m, "aiki_timer_lag_seconds_count", kind="wake-up") == 2
    assert value(m, "aiki_timer_lag_seconds_sum", kind="wake-up") == 2.5
    assert value(m, "aiki_timer_lag_seconds_bucket", kind="wake-up", le="1.0") == 1
    assert value(m, "aiki_timer_failed_passes_total") == 0


async def test_an_unknown_path_counts_as_unmatched(harness: Harness) -> None:
    r = await harness.client.get("/no/such/01J0000000000000000000000")
    assert r.status_code == 404
    m = await scrape(harness.client)
    assert value(m, "aiki_http_requests_total", route="unmatched", status="404") == 1


async def test_made_up_methods_add_no_series(harness: Harness) -> None:
    for n in range(20):
        r = await harness.client.request(f"X{n}", "/runs")
        assert r.status_code == 405
    m = await scrape(harness.client)
    methods = {got["method"] for got, _ in m["aiki_http_requests_total"]}
    assert methods <= {"GET", "POST", "other"}, methods
    assert value(m, "aiki_http_requests_total", method="other", status="405") == 20


class _Flaky(Exception):
    """Stands for the dialect's transient error (a serialization failure, say)."""


async def test_a_retried_transaction_counts_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = harness.app.state.db
    monkeypatch.setattr(db, "transient_errors", (_Flaky,))
    attempts = 0

    async def start_once_flaky(tx: Tx) -> None:
        nonlocal attempts
        attempts += 1
        await insert_run(
            tx,
            namespace="default",
            workflow="w",
            version="1",
            pool="default",
            input_json="null",
            fingerprint="f",
            reference_id="once",
            start_at=None,
            timeout_ms=None,
            now=START_MS,
        )
        if attempts == 1:
            raise _Flaky  # after the insert noted its start: rolled back, run again

    await db.write(start_once_flaky)
    assert attempts == 2
    r = await harness.client.get("/runs")
    assert len(r.json()["runs"]) == 1
    m = await scrape(harness.client)
    assert value(m, "aiki_runs_started_total") == 1
    assert value(m, "aiki_db_transaction_retries_total") == 1


async def test_the_namespace_label_is_the_operators_choice(make_harness: HarnessFactory) -> None:
    async with make_harness(metrics_namespace_label=True) as h:
        await start(h.client)
        m = await scrape(h.client)
    assert m["aiki_runs_started_total"] == [
        ({"namespace": "default", "workflow": "w", "version": "1"}, 1.0)
    ]
    assert m["aiki_queue_depth"] == [
        ({"namespace": "default", "workflow": "w", "version": "1", "pool": "default"}, 1.0)
    ]


async def test_each_app_has_its_own_registry() -> None:
    async with embedded_server() as first, embedded_server() as second:
        one, other = _client(first.app), _client(second.app)
        async with one, other:
            await start(one)
            assert value(await scrape(one), "aiki_runs_started_total") == 1
            assert value(await scrape(other), "aiki_runs_started_total") == 0


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://aiki/api/v1")


async def test_the_sample_dashboard_queries_real_metrics(harness: Harness) -> None:
    exported = set()
    r = await harness.client.get("http://aiki/metrics")
    for family in text_string_to_metric_families(r.text):
        # a labelled family without samples yet is announced by its HELP and TYPE lines
        exported |= {family.name + suffix for suffix in _SUFFIXES[family.type]}
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in _metric_names(target["expr"])
    }
    assert queried, "the dashboard queries no metric"
    assert queried <= exported, queried - exported


_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
}


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\baiki_[a-z_]+", expr))


async def test_families_without_labels_are_exported_at_zero_from_the_start(
    harness: Harness,
) -> None:
    m = await scrape(harness.client)
    assert m["aiki_db_transaction_retries_total"] == [({}, 0.0)]
    assert m["aiki_db_transaction_errors_total"] == [({}, 0.0)]
    assert m["aiki_timer_failed_passes_total"] == [({}, 0.0)]
    assert len(m["aiki_db_transaction_duration_seconds_count"]) == 1
