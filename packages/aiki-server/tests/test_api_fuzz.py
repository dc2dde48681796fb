"""The whole HTTP API against its own OpenAPI document, fuzzed by schemathesis.

A real `python -m aiki_server` on a fresh database (SQLite and PostgreSQL, through
the `db_url` fixture) serves `/openapi.json`; schemathesis generates requests for
every operation from it (its coverage, fuzzing and stateful phases, positive and
negative data) and runs every check on each answer: no 5xx, status codes, content
types, headers and bodies as documented, schema-valid requests accepted and
schema-violating ones rejected, 405s with a truthful `Allow`, and no request without
its API key answered. Bounded by a number of examples per operation and derandomized
by a fixed seed, so CI is fast and a failure reproduces; the number of cases tried is
printed, with a floor asserted so a silently empty run fails.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from schemathesis.engine import events, from_schema

from aiki_core.wire import MAX_LONG_POLL, to_millis
from server_api import claim_one, start

if TYPE_CHECKING:
    from schemathesis import Case, HookContext
    from schemathesis.engine.recorder import ScenarioRecorder

    from live_processes import LiveProcesses

MAX_EXAMPLES = 60
"""Generated cases per operation and generation mode in the fuzzing phase."""
SEED = 6
"""Fixed, so every run tries the same cases."""
MIN_CASES = 2500
"""A run that tries fewer cases than this did not really fuzz the API."""
LONG_POLL_MS = 20
"""Long-polls (claims, directives, status waits) hold a request this long at most."""
CHECKS = {
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
}
"""Checks every run must have made (with the others schemathesis runs by default)."""

_LONGEST_POLL_MS = to_millis(MAX_LONG_POLL)
_QUERY_INT = TypeAdapter(int)
_LONG_POLLS = {
    "POST /api/v1/claims": ("body", "wait"),
    "POST /api/v1/directives": ("body", "wait"),
    "POST /api/v1/migrations": ("body", "wait"),
    "GET /api/v1/runs/{run_id}/wait": ("query", "timeout_ms"),
}


# -- what the fuzzer sends -------------------------------------------------------------------


def _cron_field(low: int, high: int) -> st.SearchStrategy[str]:
    value = st.integers(low, high)
    return st.one_of(
        st.just("*"),
        value.map(str),
        value.flatmap(lambda first: st.integers(first, high).map(lambda last: f"{first}-{last}")),
        st.integers(1, high).map(lambda step: f"*/{step}"),
    )


CRON = st.tuples(
    _cron_field(0, 59),
    _cron_field(0, 23),
    _cron_field(1, 28),
    _cron_field(1, 12),
    _cron_field(0, 6),
).map(" ".join)
"""Cron expressions that fire: `format: cron` in the OpenAPI document (the server parses it)."""

schemathesis.openapi.format("cron", CRON)


def _millis_read(location: str, value: object) -> int | None:
    """The milliseconds the server reads from a long-poll value, or `None` if it refuses it."""
    if location == "query":  # a query string, read as FastAPI reads an `int` parameter
        try:
            return _QUERY_INT.validate_python(value)
        except ValidationError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if float(value).is_integer() else None


def _short_long_poll(context: HookContext, case: Case[Any]) -> Case[Any]:
    """Cap a valid long-poll duration, or supply one: a claim or status wait ends at once.

    An invalid one stays as it is, so the server must still refuse it.
    """
    del context
    where = _LONG_POLLS.get(case.operation.label)
    if where is None:
        return case
    location, name = where
    values = case.body if location == "body" else case.query
    if not isinstance(values, dict):
        return case
    millis = _millis_read(location, values.get(name, LONG_POLL_MS))
    if millis is not None and 0 <= millis <= _LONGEST_POLL_MS:
        values[name] = min(millis, LONG_POLL_MS)
    return case


def _config(seeded: dict[str, list[str]], api_key: str) -> schemathesis.Config:
    """Every phase but examples (the document has none), every check, bounded and seeded.

    Requests carry `api_key` through the document's `ApiKey` scheme (the checks of
    authentication also send none, or a wrong one). Half of the time a path id is one
    of the `seeded` rows, so requests get past the 404.
    """
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "auth": {"openapi": {"ApiKey": {"bearer": api_key}}},
            "workers": 1,
            "request-timeout": 10,
            # the API is slow to no one: the health checks would only stop a bounded run
            "suppress-health-check": ["all"],
            "cache": {"enabled": False},
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "phases": {"examples": {"enabled": False}},
            "dictionaries": {name: {"values": values} for name, values in seeded.items()},
            "parameters": {
                f"path.{name}": {"dictionary": name, "probability": 0.5} for name in seeded
            },
            "operations": [
                {
                    # a webhook's `schema` is any object to the document (it cannot hold
                    # JSON Schema's meta-schema), and one that is no valid JSON Schema is
                    # refused with the 422 its description names
                    "include-path": "/api/v1/runs/{run_id}/webhooks",
                    "include-method": "POST",
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": [*_ACCEPTED, "422"],
                        }
                    },
                }
            ],
        }
    )


_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
"""What schemathesis accepts as the answer to a valid request, by default."""


# -- what it found ----------------------------------------------------------------------------


@dataclass
class FuzzReport:
    """What a fuzz run tried and what it found."""

    cases: int = 0
    scenarios: int = 0
    checks: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        """Every failure and error, each with its answer and a request that reproduces it."""
        return "\n\n".join([*self.failures, *self.errors])

    def add(self, recorder: ScenarioRecorder) -> None:
        """Count a finished scenario's cases and keep its failed checks."""
        self.scenarios += 1
        self.cases += len(recorder.cases)
        for case_id, checks in recorder.checks.items():
            interaction = recorder.interactions.get(case_id)
            answer = interaction.response if interaction is not None else None
            got = "" if answer is None else f"{answer.status_code} {answer.content[:300]!r}\n"
            for check in checks:
                self.checks.add(check.name)
                if check.failure_info is not None:
                    failure = check.failure_info.failure
                    self.failures.append(
                        f"{recorder.label}: {check.name}: {failure.title}\n{failure.message}\n"
                        f"{got}{check.failure_info.code_sample}"
                    )


def fuzz(base_url: str, seeded: dict[str, list[str]], api_key: str) -> FuzzReport:
    """Run schemathesis against the server at `base_url` (blocking)."""
    config = _config(seeded, api_key)
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config)
    schema.hook("map_case")(_short_long_poll)
    report = FuzzReport()
    started = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            report.add(event.recorder)
        elif isinstance(event, events.NonFatalError):
            report.errors.append(f"{event.label}: {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            report.errors.append(f"fatal: {event.exception!r}")
    report.seconds = time.monotonic() - started
    return report


async def _seed(base_url: str, api_key: str) -> dict[str, list[str]]:
    """Real rows for the fuzzer to reach past a 404: a running and a queued run, a webhook
    minted by the running one, a schedule."""
    headers = {"authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=f"{base_url}/api/v1", headers=headers) as client:
        await start(client)
        claimed = await claim_one(client)
        queued = await start(client)
        run_id, revision = claimed["run"]["id"], claimed["run"]["revision"]
        task = {"name": "t", "address": "t:1", "occurrence": 0, "attempt": 1}
        r = await client.post(
            f"/runs/{run_id}/tasks",
            json={"revision": revision, "status": "completed", "result": 1, **task},
        )
        assert r.status_code == 200, r.text
        r = await client.post(
            f"/runs/{run_id}/webhooks",
            json={"revision": revision, "event": "e", "expires_in": 60_000, "schema": {}},
        )
        assert r.status_code == 201, r.text
        webhook = r.json()["webhook_id"]
        r = await client.post(
            "/schedules", json={"name": "s", "workflow": "w", "version": "1", "every": 3_600_000}
        )
        assert r.status_code == 201, r.text
        schedule = r.json()["id"]
    return {"run_id": [run_id, queued["id"]], "schedule_id": [schedule], "webhook_id": [webhook]}


# hypothesis warns when it prints a large generated body (a claim of 1000 capabilities)
@pytest.mark.filterwarnings(
    "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"
)
async def test_the_api_keeps_its_openapi_contract(
    db_url: str, processes: LiveProcesses, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await processes.start_server(db_url, "--require-api-key")
    key = (await server.create_api_key("fuzz")).key
    seeded = await _seed(server.base_url, key)
    report = await anyio.to_thread.run_sync(fuzz, server.base_url, seeded, key)
    dialect = db_url.split(":", 1)[0]
    with capsys.disabled():  # the count is the run's evidence: shown in every pytest output
        print(  # noqa: T201
            f"\napi fuzz on {dialect}: {report.cases} cases in {report.scenarios} scenarios,"
            f" {report.seconds:.1f} s, {len(report.failures)} failures, {len(report.errors)} errors"
        )
    assert not report.failures, report.describe()
    assert not report.errors, report.describe()
    assert report.cases >= MIN_CASES, report
    assert report.checks >= CHECKS, report.checks
