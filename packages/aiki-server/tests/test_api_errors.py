"""Errors of the HTTP API: always `{"error": {"code", "message", "details"}}`, never a 500."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from server_api import START_MS, error_of, iso, start

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx

    from server_api import Harness, HarnessFactory

UNKNOWN = "01JUNKNOWNRUN0000000000000"


def locations(details: dict[str, Any]) -> list[list[str]]:
    """The `loc` of each problem of a payload_validation error."""
    errors = details["errors"]
    assert errors, details
    for problem in errors:
        assert set(problem) >= {"loc", "msg", "type"}, problem
        assert problem["msg"]
    return [problem["loc"] for problem in errors]


async def run_count(client: httpx.AsyncClient) -> int:
    """How many runs the server lists."""
    r = await client.get("/runs", params={"limit": 500})
    assert r.status_code == 200, r.text
    return len(r.json()["runs"])


async def started(client: httpx.AsyncClient) -> str:
    """The id of a new run."""
    run_id: str = (await start(client))["id"]
    return run_id


# -- malformed and invalid bodies ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"workflow": ',
        b"not json",
        b'{"workflow": "w", "version": "1",}',
        b"{'workflow': 'w'}",
        b"\xff\xfe\x00garbage",
    ],
    ids=["truncated", "text", "trailing-comma", "single-quotes", "not-utf8"],
)
async def test_malformed_json_is_400(server: httpx.AsyncClient, body: bytes) -> None:
    r = await server.post("/runs", content=body, headers={"content-type": "application/json"})
    error_of(r, 400, "invalid_request")
    assert await run_count(server) == 0


async def test_malformed_json_on_worker_routes_is_400(server: httpx.AsyncClient) -> None:
    run_id = await started(server)
    for path in ("/claims", f"/runs/{run_id}/tasks", f"/runs/{run_id}/transition"):
        r = await server.post(path, content=b"{", headers={"content-type": "application/json"})
        error_of(r, 400, "invalid_request")


_W1 = {"workflow": "w", "version": "1"}


@pytest.mark.parametrize(
    ("body", "where", "kind"),
    [
        pytest.param({"workflow": "w", "version": 5}, ["body", "version"], "string_type",
                     id="version-is-a-number"),
        pytest.param({"version": "1"}, ["body", "workflow"], "missing", id="missing-workflow"),
        pytest.param(_W1 | {"colour": "red"}, ["body", "colour"], "extra_forbidden",
                     id="unknown-field"),
        pytest.param({"workflow": "no spaces!", "version": "1"}, ["body", "workflow"],
                     "string_pattern_mismatch", id="bad-name"),
        pytest.param(_W1 | {"delay": -5}, ["body", "delay"], None, id="negative-delay"),
        pytest.param(_W1 | {"delay": 1.5}, ["body", "delay"], None, id="float-delay"),
        pytest.param(_W1 | {"start_at": "2030-01-01T00:00:00"}, ["body", "start_at"],
                     "timezone_aware", id="naive-start-at"),
        pytest.param(_W1 | {"start_at": "soon"}, ["body", "start_at"], None, id="not-a-date"),
        pytest.param(_W1 | {"start_at": "2030-01-01T00:00:00Z", "delay": 5}, None, None,
                     id="start-at-and-delay"),
        pytest.param(_W1 | {"reference_id": ""}, ["body", "reference_id"], None,
                     id="empty-reference-id"),
        pytest.param([_W1], ["body"], None, id="a-list"),
        pytest.param("w", ["body"], None, id="a-string"),
    ],
)  # fmt: skip
async def test_a_wrong_shape_is_422_with_locations_and_creates_nothing(
    server: httpx.AsyncClient, body: Any, where: list[str] | None, kind: str | None
) -> None:
    r = await server.post("/runs", json=body)
    details = error_of(r, 422, "payload_validation")
    locs = locations(details)
    if where is not None:
        assert where in locs, locs
    assert all(loc and loc[0] == "body" for loc in locs), locs
    if kind is not None:
        assert kind in [p["type"] for p in details["errors"]]
    assert await run_count(server) == 0


async def test_every_problem_is_listed(server: httpx.AsyncClient) -> None:
    r = await server.post("/runs", json={"version": 5, "extra": True, "pool": ""})
    details = error_of(r, 422, "payload_validation")
    locs = locations(details)
    for where in (["body", "workflow"], ["body", "version"], ["body", "extra"], ["body", "pool"]):
        assert where in locs, locs
    message = r.json()["error"]["message"]
    assert "workflow" in message
    assert "version" in message


async def test_an_empty_body_is_422(server: httpx.AsyncClient) -> None:
    r = await server.post("/runs")
    details = error_of(r, 422, "payload_validation")
    assert ["body"] in locations(details)
    assert await run_count(server) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"worker_id": "w1", "capabilities": []},
        {"worker_id": "", "capabilities": [{"workflow": "w", "version": "1"}]},
        {"worker_id": "w1", "capabilities": [{"workflow": "w", "version": "1"}], "max_runs": 0},
        {"worker_id": "w1", "capabilities": [{"workflow": "w", "version": "1"}], "wait": 600_000},
        {"worker_id": "w1", "capabilities": [{"workflow": "w"}]},
        {"capabilities": [{"workflow": "w", "version": "1"}]},
    ],
    ids=[
        "no-capabilities",
        "empty-worker",
        "zero-runs",
        "wait-too-long",
        "no-version",
        "no-worker",
    ],
)
async def test_an_invalid_claim_is_422(server: httpx.AsyncClient, body: dict[str, Any]) -> None:
    await started(server)
    r = await server.post("/claims", json=body)
    error_of(r, 422, "payload_validation")
    # nothing was claimed
    r = await server.get("/runs", params={"status": "queued"})
    assert len(r.json()["runs"]) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"revision": 1, "action": {"kind": "explode"}},
        {"revision": 1, "action": {"kind": "fail"}},
        {"revision": 1, "action": {"kind": "suspend", "waits": []}},
        {"revision": 1, "action": {"kind": "suspend", "waits": [{"kind": "sleep", "name": "s"}]}},
        {"revision": -1, "action": {"kind": "complete"}},
        {"action": {"kind": "complete"}},
    ],
    ids=[
        "unknown-kind",
        "fail-without-error",
        "no-waits",
        "sleep-without-time",
        "negative",
        "no-rev",
    ],
)
async def test_an_invalid_transition_is_422_and_changes_nothing(
    server: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    run_id = await started(server)
    r = await server.post(
        "/claims",
        json={"worker_id": "w1", "capabilities": [{"workflow": "w", "version": "1"}], "wait": 0},
    )
    assert len(r.json()["runs"]) == 1
    before = (await server.get(f"/runs/{run_id}")).json()
    r = await server.post(f"/runs/{run_id}/transition", json=body)
    error_of(r, 422, "payload_validation")
    assert (await server.get(f"/runs/{run_id}")).json() == before


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "awaiting_retry"},
        {"status": "failed"},
        {"status": "completed", "error": {"type": "E", "message": "m"}},
        {"status": "running", "result": 1},
        {"status": "completed", "retry_at": "2030-01-01T00:00:00Z"},
        {"status": "done"},
        {"status": "completed", "attempt": 0},
    ],
    ids=["retry-without-error", "failed-without-error", "completed-with-error",
         "running-with-result", "retry-at-when-completed", "unknown-status", "attempt-0"],
)  # fmt: skip
async def test_an_invalid_task_record_is_422_and_changes_nothing(
    server: httpx.AsyncClient, fields: dict[str, Any]
) -> None:
    run_id = await started(server)
    r = await server.post(
        "/claims",
        json={"worker_id": "w1", "capabilities": [{"workflow": "w", "version": "1"}], "wait": 0},
    )
    revision = r.json()["runs"][0]["run"]["revision"]
    before = (await server.get(f"/runs/{run_id}")).json()
    body = {"revision": revision, "name": "t", "address": "t:1", "occurrence": 0, "attempt": 1}
    r = await server.post(f"/runs/{run_id}/tasks", json=body | fields)
    error_of(r, 422, "payload_validation")
    assert (await server.get(f"/runs/{run_id}")).json() == before


# -- unknown ids, routes and methods -------------------------------------------------------

_TASK = {
    "revision": 1,
    "name": "t",
    "address": "t:1",
    "occurrence": 0,
    "attempt": 1,
    "status": "completed",
}
_CHILD = {"revision": 1, "address": "c:1", "occurrence": 0, "workflow": "c", "version": "1"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "", None),
        ("GET", "/wait?timeout_ms=0", None),
        ("POST", "/cancel", None),
        ("POST", "/cancel", {"reason": "x"}),
        ("POST", "/pause", None),
        ("POST", "/resume", None),
        ("POST", "/wake", None),
        ("POST", "/events", {"name": "go"}),
        ("POST", "/tasks", _TASK),
        ("POST", "/transition", {"revision": 1, "action": {"kind": "complete"}}),
        ("POST", "/children", _CHILD),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_an_unknown_run_is_404(
    server: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    r = await server.request(method, f"/runs/{UNKNOWN}{path}", json=body)
    details = error_of(r, 404, "not_found")
    assert details == {"resource": "run", "resource_id": UNKNOWN}
    assert await run_count(server) == 0


async def test_a_run_of_another_parent_is_not_a_child_to_wait_for(
    server: httpx.AsyncClient,
) -> None:
    run_id = await started(server)
    r = await server.post("/runs", json={"workflow": "stranger", "version": "1"})
    stranger = r.json()["run"]["id"]
    r = await server.post(
        "/claims",
        json={"worker_id": "w1", "capabilities": [{"workflow": "w", "version": "1"}], "wait": 0},
    )
    [claimed] = r.json()["runs"]
    assert claimed["run"]["id"] == run_id
    before = (await server.get(f"/runs/{run_id}")).json()
    r = await server.post(
        f"/runs/{run_id}/transition",
        json={
            "revision": claimed["run"]["revision"],
            "action": {"kind": "suspend", "waits": [{"kind": "child", "child_run_id": stranger}]},
        },
    )
    details = error_of(r, 404, "not_found")
    assert details["resource_id"] == stranger
    assert (await server.get(f"/runs/{run_id}")).json() == before


@pytest.mark.parametrize(
    "url",
    ["/nope", "/runs/x/nope", "http://aiki/nothing", "http://aiki/api/v2/runs"],
)
async def test_an_unknown_route_is_404(server: httpx.AsyncClient, url: str) -> None:
    r = await server.get(url)
    error_of(r, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/runs", "GET, POST"),
        ("OPTIONS", "/runs", "GET, POST"),
        ("PUT", "/runs/x", "GET"),
        ("GET", "/claims", "POST"),
        ("GET", "/runs/x/cancel", "POST"),
        ("GET", "/runs/x/tasks", "POST"),
        ("OPTIONS", "/schedules", "GET, POST"),
        ("POST", "/schedules/x", "DELETE, GET, PATCH"),
    ],
)
async def test_a_wrong_method_is_405_allowing_every_method_of_the_path(
    server: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    # Starlette's own 405 names the methods of the first route that matched the path
    r = await server.request(method, path)
    error_of(r, 405, "invalid_request")
    assert r.headers["allow"] == allowed


# -- the wire's types: JSON's own, with the limits the OpenAPI document states ---------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/claims", {"worker_id": "w", "capabilities": [_W1], "max_runs": "5"}, "max_runs"),
        ("/claims", {"worker_id": "w", "capabilities": [_W1], "max_runs": True}, "max_runs"),
        ("/claims", {"worker_id": "w", "capabilities": [_W1], "wait": "5"}, "wait"),
        ("/claims", {"worker_id": "w", "capabilities": [_W1], "wait": 60_001}, "wait"),
        ("/heartbeats", {"worker_id": "w", "runs": [{"run_id": "x", "revision": False}]},
         "revision"),
        ("/heartbeats", {"worker_id": "w", "runs": [{"run_id": "x", "revision": 2**53}]},
         "revision"),
        ("/runs", _W1 | {"start_at": 1_800_000_000}, "start_at"),
        ("/runs", _W1 | {"start_at": "1800000000"}, "start_at"),
        ("/runs", _W1 | {"start_at": "2030-01-01 00:00:00Z"}, "start_at"),
        ("/runs", _W1 | {"delay": "P1D"}, "delay"),
        ("/runs", _W1 | {"timeout": 36_525 * 86_400_000 + 1}, "timeout"),
        ("/schedules", {"name": "s", "workflow": "w", "version": "1", "every": 999}, "every"),
        ("/schedules", {"name": "s", "workflow": "w", "version": "1", "every": 1000,
                        "timezone": "Mars/Olympus"}, "timezone"),
    ],
    ids=["count-as-string", "count-as-bool", "duration-as-string", "wait-over-its-maximum",
         "revision-as-bool", "revision-past-2**53", "timestamp-as-number",
         "timestamp-as-digits", "timestamp-with-a-space",
         "duration-as-iso-8601", "duration-over-100-years", "interval-under-1-s",
         "unknown-timezone"],
)  # fmt: skip
async def test_a_value_of_another_json_type_or_past_its_limit_is_422(
    server: httpx.AsyncClient, path: str, body: dict[str, Any], field: str
) -> None:
    # pydantic's lax mode took "5", true, 1.8e9 (as seconds) and "P1D": the schema says no
    await started(server)
    r = await server.post(path, json=body)
    details = error_of(r, 422, "payload_validation")
    assert any(field in problem["loc"] for problem in details["errors"]), details
    assert await run_count(server) == 1
    assert (await server.get("/schedules")).json()["schedules"] == []


async def test_a_whole_number_written_with_a_fraction_is_an_integer(
    harness: Harness,
) -> None:
    # JSON Schema's integers include 5000.0: durations and counts take it
    r = await harness.client.post("/runs", json=_W1 | {"delay": 5000.0, "timeout": 1000.0})
    assert r.status_code == 201, r.text
    run = r.json()["run"]
    assert run["start_at"] == iso(START_MS + 5000)
    assert run["deadline_at"] == iso(START_MS + 6000)
    r = await harness.client.post(
        "/claims",
        json={"worker_id": "w", "capabilities": [_W1], "max_runs": 2.0, "wait": 0.0},
    )
    assert r.status_code == 200, r.text


async def test_times_past_the_year_9999_are_its_last_millisecond(
    server: httpx.AsyncClient,
) -> None:
    # valid RFC 3339 and within any schema, so taken: a start in UTC's year 10000, and a
    # deadline after it, are as good as never
    late = _W1 | {"start_at": "9999-12-31T23:59:59-14:00", "timeout": 2 * 86_400_000}
    r = await server.post("/runs", json=late)
    assert r.status_code == 201, r.text
    run = r.json()["run"]
    assert run["status"] == "scheduled"
    assert run["start_at"] == run["deadline_at"] == "9999-12-31T23:59:59.999000Z"
    # and one before year 1 in UTC is its first moment: the run starts now
    r = await server.post("/runs", json=_W1 | {"start_at": "0001-01-01T00:00:00+14:00"})
    assert r.status_code == 201, r.text
    assert r.json()["run"]["status"] == "queued"


# -- oversize bodies -----------------------------------------------------------------------


async def test_an_oversize_body_is_413_and_creates_nothing(make_harness: HarnessFactory) -> None:
    async with make_harness(max_body_bytes=1000) as h:
        big = {"workflow": "w", "version": "1", "input": "x" * 2000}
        r = await h.client.post("/runs", json=big)
        details = error_of(r, 413, "payload_too_large")
        assert details["limit"] == 1000
        assert details["size"] > 1000
        assert await run_count(h.client) == 0
        # just under the limit is fine
        small = {"workflow": "w", "version": "1", "input": "x" * 900}
        assert len(json.dumps(small)) <= 1000
        r = await h.client.post("/runs", json=small)
        assert r.status_code == 201, r.text
        assert await run_count(h.client) == 1


async def test_an_oversize_streamed_body_is_413(make_harness: HarnessFactory) -> None:
    async with make_harness(max_body_bytes=1000) as h:

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"workflow": "w", "version": "1", "input": "'
            for _ in range(20):
                yield b"x" * 100
            yield b'"}'

        r = await h.client.post(
            "/runs", content=chunks(), headers={"content-type": "application/json"}
        )
        details = error_of(r, 413, "payload_too_large")
        assert details["limit"] == 1000
        assert await run_count(h.client) == 0


async def test_an_oversize_event_is_413(make_harness: HarnessFactory) -> None:
    async with make_harness(max_body_bytes=1000) as h:
        run_id = await started(h.client)
        r = await h.client.post(f"/runs/{run_id}/events", json={"name": "go", "data": "y" * 5000})
        error_of(r, 413, "payload_too_large")
        assert (await h.client.get(f"/runs/{run_id}")).json()["events"] == []


# -- values no column can hold --------------------------------------------------------------

_HUGE = 10**20


async def _claimed(client: httpx.AsyncClient) -> tuple[str, int]:
    run_id = await started(client)
    r = await client.post(
        "/claims",
        json={"worker_id": "w1", "capabilities": [{"workflow": "w", "version": "1"}], "wait": 0},
    )
    return run_id, r.json()["runs"][0]["run"]["revision"]


@pytest.mark.parametrize(
    "body",
    [
        {"workflow": "w", "version": "1", "delay": _HUGE},
        {"workflow": "w", "version": "1", "delay": 10**17},
        {"workflow": "w", "version": "1", "timeout": _HUGE},
    ],
    ids=["delay-past-int64", "delay-past-timedelta", "timeout"],
)
async def test_a_duration_too_long_is_422_naming_the_field(
    server: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    r = await server.post("/runs", json=body)
    details = error_of(r, 422, "payload_validation")
    field = next(key for key in ("delay", "timeout") if key in body)
    assert any(field in problem["loc"] for problem in details["errors"]), details
    assert await run_count(server) == 0


@pytest.mark.parametrize(
    "body", [{"workflow": "w", "version": "1", "input": "\ud800"}], ids=["unpaired-surrogate"]
)
async def test_a_start_with_an_unstorable_value_is_400(
    server: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    # json.dumps keeps "\ud800" as an escape: valid JSON text, but no UTF-8 string
    r = await server.post(
        "/runs", content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    error_of(r, 400, "invalid_request")
    assert await run_count(server) == 0


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/tasks", {"name": "t", "address": "t:1", "occurrence": _HUGE, "attempt": 1,
                    "status": "completed"}),
        ("/tasks", {"name": "t", "address": "t:1", "occurrence": 0, "attempt": _HUGE,
                    "status": "completed"}),
        ("/children", {"address": "c:1", "occurrence": _HUGE, "workflow": "c", "version": "1"}),
        ("/transition", {"action": {"kind": "suspend", "waits": [
            {"kind": "event", "name": "e", "occurrence": _HUGE}]}}),
    ],
    ids=["task-occurrence", "task-attempt", "child-occurrence", "event-occurrence"],
)  # fmt: skip
async def test_a_worker_write_with_an_unstorable_number_is_422_and_changes_nothing(
    server: httpx.AsyncClient, path: str, fields: dict[str, Any]
) -> None:
    run_id, revision = await _claimed(server)
    before = (await server.get(f"/runs/{run_id}")).json()
    r = await server.post(f"/runs/{run_id}{path}", json={"revision": revision, **fields})
    details = error_of(r, 422, "payload_validation")
    field = "attempt" if fields.get("attempt") == _HUGE else "occurrence"
    assert any(field in problem["loc"] for problem in details["errors"]), details
    assert (await server.get(f"/runs/{run_id}")).json() == before
    assert await run_count(server) == 1


async def test_a_claim_with_a_wait_too_long_is_422(server: httpx.AsyncClient) -> None:
    await started(server)
    r = await server.post(
        "/claims",
        json={
            "worker_id": "w1",
            "capabilities": [{"workflow": "w", "version": "1"}],
            "wait": _HUGE,
        },
    )
    details = error_of(r, 422, "payload_validation")
    assert any("wait" in problem["loc"] for problem in details["errors"]), details
    r = await server.get("/runs", params={"status": "queued"})
    assert len(r.json()["runs"]) == 1


async def test_a_cursor_with_a_number_past_its_pattern_is_422(server: httpx.AsyncClient) -> None:
    await started(server)
    r = await server.get("/runs", params={"cursor": "99999999999999999999999-x"})
    details = error_of(r, 422, "payload_validation")
    assert ["query", "cursor"] in locations(details)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/runs", {"workflow": "w", "version": "1", "reference_id": "a\0b"}),
        ("POST", "/claims", {"worker_id": "\0", "capabilities": [_W1]}),
        ("POST", "/heartbeats", {"worker_id": "w\0", "runs": []}),
        ("POST", "/runs/{run_id}/events", {"name": "e", "reference_id": "\0"}),
        ("POST", "/runs/{run_id}/cancel", {"reason": "a\0b"}),
        ("POST", "/schedules", {"name": "s", "workflow": "w", "version": "1", "cron": "\0"}),
    ],
    ids=["reference-id", "worker-id", "heartbeat", "event-reference", "reason", "cron"],
)  # fmt: skip
async def test_a_nul_in_a_plain_string_is_422_on_every_database(
    server: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    # PostgreSQL text cannot hold NUL: the schema says so (a pattern), on both databases
    run_id, _ = await _claimed(server)
    before = (await server.get(f"/runs/{run_id}")).json()
    r = await server.request(method, path.format(run_id=run_id), json=body)
    error_of(r, 422, "payload_validation")
    assert (await server.get(f"/runs/{run_id}")).json() == before
    assert await run_count(server) == 1


@pytest.mark.parametrize(
    ("method", "path", "resource"),
    [
        ("GET", "/runs/a%00b", "run"),
        ("POST", "/runs/a%00b/tasks", "run"),
        ("GET", "/runs/no-such-run", "run"),
        ("POST", "/runs/no-such-run/cancel", "run"),
        ("GET", "/schedules/nightly-report", "schedule"),
        ("POST", "/webhooks/not-a-webhook", "webhook"),
    ],
    ids=["nul", "nul-hot-path", "dashes", "dashes-cancel", "schedule", "webhook"],
)
async def test_an_id_no_row_can_have_is_404_like_an_unknown_one(
    server: httpx.AsyncClient, method: str, path: str, resource: str
) -> None:
    # outside the id pattern (stated in the OpenAPI), so nothing can have it: not found,
    # as clients that catch `NotFoundError` on a user's id expect
    run_id, _ = await _claimed(server)
    before = (await server.get(f"/runs/{run_id}")).json()
    r = await server.request(method, path, json=None)
    details = error_of(r, 404, "not_found")
    assert details["resource"] == resource
    assert (await server.get(f"/runs/{run_id}")).json() == before


async def test_a_nul_in_a_payload_is_kept(server: httpx.AsyncClient) -> None:
    # a NUL inside a payload is escaped in its JSON text, so every database keeps it
    r = await server.post("/runs", json={"workflow": "w", "version": "1", "input": "a\0b"})
    assert r.status_code == 201, r.text
    got = await server.get(f"/runs/{r.json()['run']['id']}")
    assert got.json()["input"] == "a\0b"


# -- query parameters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 10_000},
        {"limit": "many"},
        {"status": "bogus"},
        {"created_after": "yesterday"},
        {"created_before": "2030-01-01T00:00:00"},
        {"cursor": "x" * 500},
    ],
    ids=["limit-0", "limit-10000", "limit-text", "bad-status", "bad-date", "naive-date", "long"],
)
async def test_invalid_list_parameters_are_422(
    server: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    await started(server)
    r = await server.get("/runs", params=params)
    details = error_of(r, 422, "payload_validation")
    assert all(loc[0] == "query" for loc in locations(details))


@pytest.mark.parametrize(
    "params",
    [{"timeout_ms": -1}, {"timeout_ms": 600_000}, {"timeout_ms": "soon"}, {"status": "bogus"}],
    ids=["negative", "too-long", "text", "bad-status"],
)
async def test_invalid_wait_parameters_are_422(
    server: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    run_id = await started(server)
    r = await server.get(f"/runs/{run_id}/wait", params=params)
    details = error_of(r, 422, "payload_validation")
    assert all(loc[0] == "query" for loc in locations(details))


# -- OpenAPI -------------------------------------------------------------------------------


async def test_openapi_is_served(server: httpx.AsyncClient) -> None:
    r = await server.get("http://aiki/openapi.json")
    assert r.status_code == 200, r.text
    spec = json.loads(r.text)
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path in (
        "/api/v1/runs",
        "/api/v1/runs/{run_id}",
        "/api/v1/runs/{run_id}/wait",
        "/api/v1/runs/{run_id}/transition",
        "/api/v1/claims",
    ):
        assert path in paths, sorted(paths)
    assert set(paths["/api/v1/runs"]) >= {"get", "post"}
    assert "post" in paths["/api/v1/claims"]
    schemas = spec["components"]["schemas"]
    assert "ErrorResponse" in schemas
    assert "error" in schemas["ErrorResponse"]["properties"]
    # the error responses of an operation point at the shared shape
    start_responses = paths["/api/v1/runs"]["post"]["responses"]
    assert "201" in start_responses
    assert "ErrorResponse" in json.dumps(start_responses["409"])


async def test_openapi_states_what_the_server_accepts(server: httpx.AsyncClient) -> None:
    spec = (await server.get("http://aiki/openapi.json")).json()
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    # idempotent creates answer the existing resource with a 200
    for path in ("/api/v1/runs", "/api/v1/schedules", "/api/v1/runs/{run_id}/children"):
        assert "200" in paths[path]["post"]["responses"], path
    # limits the validators check
    wait = schemas["ClaimRequest"]["properties"]["wait"]
    assert (wait["minimum"], wait["maximum"]) == (0, 60_000)
    expires = schemas["CreateWebhookRequest"]["properties"]["expires_in"]
    assert (expires["minimum"], expires["maximum"]) == (1, 90 * 86_400_000)
    assert schemas["RecordTaskRequest"]["properties"]["occurrence"]["maximum"] == 2**53 - 1
    cron = schemas["CreateScheduleRequest"]["properties"]["cron"]["anyOf"][0]
    assert cron["format"] == "cron"
    assert "Europe/Paris" in json.dumps(schemas["CreateScheduleRequest"]["properties"]["timezone"])
    # rules across fields, and the tags of the discriminated unions
    exclusive = [rule["required"] for rule in schemas["StartRunRequest"]["not"]["anyOf"]]
    assert exclusive == [["start_at", "delay"], ["rate_limit", "start_at"], ["rate_limit", "delay"]]
    assert len(schemas["CreateScheduleRequest"]["oneOf"]) == 2
    assert len(schemas["RecordTaskRequest"]["allOf"]) == 3
    for tagged in ("AwaitSleep", "AwaitEvent", "AwaitChild", "AwaitRetry", "CompleteRun",
                   "FailRun", "SuspendRun", "ReleaseRun"):  # fmt: skip
        assert "kind" in schemas[tagged]["required"], tagged
    # ids and cursors have patterns; the path of a run says so too
    run_id = paths["/api/v1/runs/{run_id}"]["get"]["parameters"][0]
    assert run_id["schema"]["pattern"] == "^[0-9A-Za-z]{1,64}$"


@pytest.mark.parametrize(
    "action",
    [
        {"waits": [{"name": "s", "occurrence": 0, "wake_at": "2030-01-01T00:00:00Z"}]},
        {"kind": "suspend", "waits": [{"name": "s", "occurrence": 0}]},
    ],
    ids=["action-without-kind", "wait-without-kind"],
)
async def test_a_union_member_without_its_kind_is_422(
    server: httpx.AsyncClient, action: dict[str, Any]
) -> None:
    run_id, revision = await _claimed(server)
    body = {"revision": revision, "action": action}
    r = await server.post(f"/runs/{run_id}/transition", json=body)
    error_of(r, 422, "payload_validation")
