"""`HotPath`: the calls of every run (start, claim, task record, transition, wait) are
answered without the FastAPI app when it reads them as the app would.

The hot path runs on the harness's real worker writes and database; the app behind it
is replaced by a recorder, so each test sees whether a request was handed on, and
with exactly the body the client sent.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import anyio

from aiki_core.wire import DEFAULT_NAMESPACE
from aiki_server._auth import NAMESPACE_SCOPE_KEY
from aiki_server._hot_path import HotPath, Services
from server_api import claim_one, get_run, start, task_record

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope, Send

    from server_api import Harness


class Recorder:
    """Stands for the FastAPI app: notes each request it gets, with its whole body."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.requests.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"handed on"})


def hot_path(harness: Harness, app: Recorder, max_body_bytes: int = 10_000) -> HotPath:
    """A hot path on the harness's services, handing on to `app`."""
    state = harness.app.state
    services = Services(state.runs, state.claims, state.worker_writes)
    return HotPath(app, services, max_body_bytes=max_body_bytes)


async def post(
    hot: HotPath,
    path: str,
    body: bytes,
    *,
    chunk: int | None = None,
    method: str = "POST",
    query: bytes = b"",
    content_type: bytes | None = b"application/json",
    hung_up: bool = False,
) -> tuple[int, bytes]:
    """Send `body` to `hot` (in pieces of `chunk` bytes if given); the status and body.

    After the body, the caller waits for the answer, or has `hung_up` (`http.disconnect`).
    """
    pieces = [body] if chunk is None else [body[i : i + chunk] for i in range(0, len(body), chunk)]
    incoming: list[Message] = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        if not incoming and not hung_up:
            await anyio.sleep_forever()
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [] if content_type is None else [(b"content-type", content_type)]
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers,
        NAMESPACE_SCOPE_KEY: DEFAULT_NAMESPACE,  # as `ApiKeyAuth` puts it
    }
    await hot(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def record_body(revision: int, **fields: Any) -> bytes:
    return json.dumps(task_record(revision, **fields)).encode()


async def test_a_valid_record_and_transition_are_answered_by_the_hot_path(
    harness: Harness,
) -> None:
    app = Recorder()
    hot = hot_path(harness, app)
    run_id = (await start(harness.client))["id"]
    revision = (await claim_one(harness.client))["run"]["revision"]

    status, body = await post(hot, f"/api/v1/runs/{run_id}/tasks", record_body(revision))
    assert status == 200, body
    assert json.loads(body)["status"] == "completed"
    complete = {"revision": revision, "action": {"kind": "complete", "result": 3}}
    transition_path = f"/api/v1/runs/{run_id}/transition"
    status, body = await post(hot, transition_path, json.dumps(complete).encode())
    assert status == 200, body
    assert json.loads(body)["run"]["status"] == "completed"

    assert app.requests == []
    got = await get_run(harness.client, run_id)
    assert [(t["address"], t["result"]) for t in got["tasks"]] == [("charge:1", 7)]
    assert got["result"] == 3


async def test_an_error_of_the_call_leaves_in_the_wire_shape(harness: Harness) -> None:
    app = Recorder()
    hot = hot_path(harness, app)
    run_id = (await start(harness.client))["id"]
    revision = (await claim_one(harness.client))["run"]["revision"]

    status, body = await post(hot, f"/api/v1/runs/{run_id}/tasks", record_body(revision + 1))

    assert status == 409
    assert json.loads(body)["error"]["code"] == "stale_revision"
    assert app.requests == []


async def test_what_the_hot_path_does_not_take_is_handed_on_whole(harness: Harness) -> None:
    app = Recorder()
    hot = hot_path(harness, app, max_body_bytes=400)
    run_id = (await start(harness.client))["id"]
    invalid = record_body(1, extra=True)
    not_json = b'{"revision": '
    too_large = record_body(1, result="x" * 500)
    other_route = b'{"workflow": "w", "version": "1", "cron": "* * * * *"}'

    for path, body, chunk in [
        (f"/api/v1/runs/{run_id}/tasks", invalid, None),
        (f"/api/v1/runs/{run_id}/transition", not_json, None),
        (f"/api/v1/runs/{run_id}/tasks", too_large, 100),
        ("/api/v1/schedules", other_route, None),
    ]:
        status, answer = await post(hot, path, body, chunk=chunk)
        assert (status, answer) == (299, b"handed on")
        assert app.requests[-1] == (path, body)
    assert len(app.requests) == 4
    assert (await get_run(harness.client, run_id))["tasks"] == []


async def test_a_start_claim_and_wait_are_answered_by_the_hot_path(harness: Harness) -> None:
    app = Recorder()
    hot = hot_path(harness, app)
    start_body = json.dumps({"workflow": "w", "version": "1", "reference_id": "r"}).encode()

    status, body = await post(hot, "/api/v1/runs", start_body)
    assert status == 201, body
    run_id = json.loads(body)["run"]["id"]
    status, body = await post(hot, "/api/v1/runs", start_body)
    assert (status, json.loads(body)["run"]["id"]) == (200, run_id)  # its reference id's run
    capabilities = [{"workflow": "w", "version": "1", "pool": "default"}]
    claim_body = json.dumps({"worker_id": "a", "capabilities": capabilities, "wait": 0})
    status, body = await post(hot, "/api/v1/claims", claim_body.encode())
    assert status == 200, body
    assert [c["run"]["id"] for c in json.loads(body)["runs"]] == [run_id]
    wait = f"/api/v1/runs/{run_id}/wait"
    status, body = await post(hot, wait, b"", method="GET", query=b"status=running&timeout_ms=0")
    assert status == 200, body
    assert json.loads(body)["status"] == "running"

    assert app.requests == []


async def test_a_claim_whose_worker_hung_up_claims_nothing(harness: Harness) -> None:
    """The caller left before the poll read the queue: the run stays for another worker."""
    hot = hot_path(harness, Recorder())
    run = await start(harness.client)
    capabilities = [{"workflow": "w", "version": "1", "pool": "default"}]
    body = json.dumps({"worker_id": "a", "capabilities": capabilities, "wait": 0}).encode()

    status, answer = await post(hot, "/api/v1/claims", body, hung_up=True)

    assert (status, json.loads(answer)["runs"]) == (200, [])
    assert (await get_run(harness.client, run["id"]))["status"] == "queued"


async def test_a_wait_whose_query_it_does_not_read_as_the_app_is_handed_on(
    harness: Harness,
) -> None:
    app = Recorder()
    hot = hot_path(harness, app)
    run_id = (await start(harness.client))["id"]
    wait = f"/api/v1/runs/{run_id}/wait"
    queries = [
        b"timeout_ms=60001",  # out of range: the app's 422
        b"timeout_ms=%2B5",  # "+5", which the app may read as 5: it decides
        b"timeout_ms=5&timeout_ms=6",
        b"timeout_ms=",
        b"status=nope",
        b"status=RUNNING",
        b"stats=running",
        b"timeout_ms=5&extra",
    ]
    for query in queries:
        assert await post(hot, wait, b"", method="GET", query=query) == (299, b"handed on")
    assert [path for path, _ in app.requests] == [wait] * len(queries)


async def test_a_body_of_another_content_type_is_handed_on(harness: Harness) -> None:
    """The app reads only a JSON content type's body as JSON: it answers the others."""
    app = Recorder()
    hot = hot_path(harness, app)
    body = json.dumps({"workflow": "w", "version": "1"}).encode()

    for content_type in (b"text/plain", b"application/json; charset=utf-8", None):
        status, answer = await post(hot, "/api/v1/runs", body, content_type=content_type)
        assert (status, answer) == (299, b"handed on")
    assert app.requests == [("/api/v1/runs", body)] * 3


async def test_a_cross_site_request_without_a_content_type_starts_or_claims_nothing(
    harness: Harness,
) -> None:
    """A browser page may POST to a keyless local server with no content type (no-cors):
    the server refuses such a body rather than read it as JSON."""
    run = await start(harness.client)
    capabilities = [{"workflow": "w", "version": "1", "pool": "default"}]
    calls = {
        "/runs": {"workflow": "w", "version": "1"},
        "/claims": {"worker_id": "page", "capabilities": capabilities, "wait": 0},
    }
    for path, body in calls.items():
        headers = {"origin": "https://elsewhere.example"}
        r = await harness.client.post(path, content=json.dumps(body).encode(), headers=headers)
        assert r.status_code == 422, r.text

    listed = (await harness.client.get("/runs")).json()["runs"]
    assert [(r["id"], r["status"]) for r in listed] == [(run["id"], "queued")]


async def test_a_hot_call_is_counted_under_its_route(harness: Harness) -> None:
    """Whatever its run id spells (`v1`, `api`, `runs` are ids too)."""
    for run_id in ("v1", "api", "runs"):
        r = await harness.client.get(f"/runs/{run_id}/wait", params={"timeout_ms": 0})
        assert r.status_code == 404, r.text
        r = await harness.client.post(f"/runs/{run_id}/tasks", json=task_record(1))
        assert r.status_code == 404, r.text

    text = (await harness.client.get("http://aiki/metrics")).text
    routes = set(re.findall(r'route="([^"]*)"', text))
    assert {route for route in routes if route.endswith(("/wait", "/tasks"))} == {
        "/api/v1/runs/{run_id}/wait",
        "/api/v1/runs/{run_id}/tasks",
    }
