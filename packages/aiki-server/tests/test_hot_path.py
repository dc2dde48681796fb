"""`HotPath`: valid task records and transitions are answered without the FastAPI app.

The hot path runs on the harness's real worker writes and database; the app behind it
is replaced by a recorder, so each test sees whether a request was handed on, and
with exactly the body the client sent.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiki_core.wire import DEFAULT_NAMESPACE
from aiki_server._auth import NAMESPACE_SCOPE_KEY
from aiki_server._hot_path import HotPath
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


async def post(
    hot: HotPath, path: str, body: bytes, *, chunk: int | None = None
) -> tuple[int, bytes]:
    """POST `body` to `hot` (in pieces of `chunk` bytes if given); the status and body."""
    pieces = [body] if chunk is None else [body[i : i + chunk] for i in range(0, len(body), chunk)]
    incoming: list[Message] = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [],
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
    hot = HotPath(app, harness.app.state.worker_writes, max_body_bytes=10_000)
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
    hot = HotPath(app, harness.app.state.worker_writes, max_body_bytes=10_000)
    run_id = (await start(harness.client))["id"]
    revision = (await claim_one(harness.client))["run"]["revision"]

    status, body = await post(hot, f"/api/v1/runs/{run_id}/tasks", record_body(revision + 1))

    assert status == 409
    assert json.loads(body)["error"]["code"] == "stale_revision"
    assert app.requests == []


async def test_what_the_hot_path_does_not_take_is_handed_on_whole(harness: Harness) -> None:
    app = Recorder()
    hot = HotPath(app, harness.app.state.worker_writes, max_body_bytes=400)
    run_id = (await start(harness.client))["id"]
    invalid = record_body(1, extra=True)
    not_json = b'{"revision": '
    too_large = record_body(1, result="x" * 500)
    other_route = b'{"workflow": "w", "version": "1"}'

    for path, body, chunk in [
        (f"/api/v1/runs/{run_id}/tasks", invalid, None),
        (f"/api/v1/runs/{run_id}/transition", not_json, None),
        (f"/api/v1/runs/{run_id}/tasks", too_large, 100),
        ("/api/v1/runs", other_route, None),
    ]:
        status, answer = await post(hot, path, body, chunk=chunk)
        assert (status, answer) == (299, b"handed on")
        assert app.requests[-1] == (path, body)
    assert len(app.requests) == 4
    assert (await get_run(harness.client, run_id))["tasks"] == []
