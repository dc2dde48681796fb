"""`SignedPushApp`: what an endpoint taking Aiki pushes answers before and after `handle`.

A tiny subclass, driven by raw ASGI calls (what any ASGI server makes), so each
chunk of a body, a caller going away and the lifespan protocol are in the test's hands.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from aiki_core import JsonLogger, Logger, NotFoundError
from aiki_core.push import PUSH_ID_HEADER, PushRefused, PushSecret, SignedPushApp, sign_push

if TYPE_CHECKING:
    from collections.abc import MutableMapping, Sequence

SECRET = PushSecret.generate()


class Shout(BaseModel):
    text: str


class Shouted(BaseModel):
    text: str
    delivery_id: str


class ShoutApp(SignedPushApp):
    """Upper-cases a pushed `Shout`: refuses "nobody", crashes on "boom"."""

    def __init__(self, *, path: str = "/", max_body_bytes: int = 64) -> None:
        super().__init__([SECRET], path=path, max_body_bytes=max_body_bytes)
        self.stream = io.StringIO()
        self.handled: list[str] = []

    def request_log(self) -> Logger:
        return JsonLogger(stream=self.stream)

    async def handle(self, body: bytes, delivery_id: str, log: Logger) -> Shouted:
        shout = self.parse(Shout, body, "not a shout")
        self.handled.append(shout.text)
        if shout.text == "nobody":
            raise PushRefused(NotFoundError("listener", "nobody"))
        if shout.text == "boom":
            raise RuntimeError("the shouting broke")
        log.info("shouted", {"text": shout.text})
        return Shouted(text=shout.text.upper(), delivery_id=delivery_id)

    def logged(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


def signed(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in sign_push(body, [SECRET]).items()]


class Answer(BaseModel):
    status: int
    headers: dict[str, str]
    body: dict[str, Any]


async def call(
    app: SignedPushApp,
    headers: Sequence[tuple[bytes, bytes]],
    chunks: Sequence[bytes | None],
    *,
    method: str = "POST",
    path: str = "/",
    root_path: str = "",
) -> Answer:
    """One request, its body in `chunks`; a `None` last: the caller goes away there."""
    messages: list[MutableMapping[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
        if chunk is not None
    ]
    messages.append({"type": "http.disconnect"})
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return messages.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": root_path,
        "headers": list(headers),
    }
    await app(scope, receive, send)
    start, body = sent
    assert (start["type"], body["type"]) == ("http.response.start", "http.response.body")
    content: bytes = body["body"]
    answer_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert answer_headers["content-type"] == "application/json"
    assert answer_headers["content-length"] == str(len(content))
    return Answer(status=start["status"], headers=answer_headers, body=json.loads(content))


async def test_a_signed_push_is_handled_and_its_answer_is_the_200() -> None:
    app = ShoutApp()
    body = Shout(text="hello").model_dump_json().encode()
    headers = signed(body)
    answer = await call(app, headers, [body])
    assert answer.status == 200, answer
    delivery_id = dict(headers)[PUSH_ID_HEADER.encode()].decode()
    assert answer.body == {"text": "HELLO", "delivery_id": delivery_id}
    assert [(r["message"], r["text"]) for r in app.logged()] == [("shouted", "hello")]


async def test_a_chunked_body_is_read_whole() -> None:
    app = ShoutApp()
    body = Shout(text="hello").model_dump_json().encode()
    answer = await call(app, signed(body), [body[:3], b"", body[3:]])
    assert (answer.status, answer.body["text"]) == (200, "HELLO")


async def test_only_post_on_the_apps_path_below_its_mount_point_is_served() -> None:
    app = ShoutApp(path="/hooks/")
    body = Shout(text="hello").model_dump_json().encode()
    mounted = await call(app, signed(body), [body], path="/svc/hooks/", root_path="/svc")
    assert mounted.status == 200, mounted
    elsewhere = await call(app, signed(body), [body], path="/svc/other", root_path="/svc")
    assert (elsewhere.status, elsewhere.body["error"]["code"]) == (404, "not_found")
    got = await call(app, signed(body), [body], method="GET", path="/hooks")
    assert (got.status, got.body["error"]["code"]) == (405, "invalid_request")
    assert got.headers["allow"] == "POST"
    assert app.handled == ["hello"]


async def test_a_body_over_the_limit_is_refused_told_or_streamed() -> None:
    app = ShoutApp(max_body_bytes=16)
    body = Shout(text="a shout longer than the limit").model_dump_json().encode()
    # a declared length over the limit: refused before a byte is read
    told = await call(app, [*signed(body), (b"content-length", str(len(body)).encode())], [])
    assert (told.status, told.body["error"]["code"]) == (413, "payload_too_large")
    streamed = await call(app, signed(body), [body[:10], body[10:]])
    assert (streamed.status, streamed.body["error"]["code"]) == (413, "payload_too_large")
    # "²" is a digit to str.isdigit, not to int: no length declared, the body is read
    odd = await call(app, [*signed(body), (b"content-length", b"\xb2")], [body])
    assert odd.status == 413
    assert app.handled == []


async def test_a_caller_gone_before_its_body_ends_gets_a_400() -> None:
    app = ShoutApp()
    body = Shout(text="hello").model_dump_json().encode()
    answer = await call(app, signed(body), [body[:3], None])
    assert (answer.status, answer.body["error"]["code"]) == (400, "invalid_request")
    assert app.handled == []


async def test_a_push_not_signed_by_a_secret_of_the_app_runs_nothing() -> None:
    app = ShoutApp()
    body = Shout(text="hello").model_dump_json().encode()
    other = [(k.encode(), v.encode()) for k, v in sign_push(body, [PushSecret.generate()]).items()]
    tampered = Shout(text="HELLO").model_dump_json().encode()
    headers = signed(body)
    for answer in [
        await call(app, other, [body]),
        await call(app, headers, [tampered]),
        await call(app, [], [body]),
    ]:
        assert (answer.status, answer.body["error"]["code"]) == (401, "push_signature_invalid")
    assert (await call(app, headers, [body])).status == 200
    replayed = await call(app, headers, [body])
    assert replayed.status == 401
    assert app.handled == ["hello"]


async def test_a_refusal_is_logged_with_no_more_of_the_delivery_id_than_one_holds() -> None:
    app = ShoutApp()
    await call(app, [(PUSH_ID_HEADER.encode(), b"d" * 60_000)], [b"{}"])
    [record] = app.logged()
    assert (record["level"], record["message"], record["status"]) == ("WARN", "push refused", 401)
    assert record["delivery_id"] == "d" * 64


async def test_handle_refuses_with_its_error_and_the_body_is_parsed_for_it() -> None:
    app = ShoutApp()
    for body, status, code in [
        (b'{"words": "hello"}', 422, "payload_validation"),
        (b"not json", 422, "payload_validation"),
        (Shout(text="nobody").model_dump_json().encode(), 404, "not_found"),
    ]:
        answer = await call(app, signed(body), [body])
        assert (answer.status, answer.body["error"]["code"]) == (status, code), answer
    assert app.handled == ["nobody"]


async def test_a_crash_in_handle_is_a_500_and_the_app_serves_on() -> None:
    app = ShoutApp()
    boom = Shout(text="boom").model_dump_json().encode()
    crashed = await call(app, signed(boom), [boom])
    assert (crashed.status, crashed.body["error"]["message"]) == (500, "the endpoint failed")
    assert "the shouting broke" not in json.dumps(crashed.body)
    [record] = app.logged()
    assert (record["level"], record["message"]) == ("ERROR", "the push crashed the endpoint")
    body = Shout(text="hello").model_dump_json().encode()
    assert (await call(app, signed(body), [body])).status == 200


async def test_lifespan_events_are_acknowledged_and_websockets_refused() -> None:
    app = ShoutApp()
    events: list[MutableMapping[str, Any]] = [
        {"type": "lifespan.startup"},
        {"type": "lifespan.shutdown"},
    ]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return events.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    sent.clear()
    await app({"type": "websocket", "path": "/", "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1003}]
    with pytest.raises(ValueError, match="speaks HTTP"):
        await app({"type": "webtransport"}, receive, send)


def test_an_app_needs_room_for_a_body() -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        ShoutApp(max_body_bytes=0)
