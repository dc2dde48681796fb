"""The client's HTTP paths over real sockets: retries, errors, headers, keep-alive.

The servers here are raw: an `asyncio.start_server` on 127.0.0.1 that reads HTTP/1.1
requests and writes canned answers (or none), recording what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, urlsplit

import anyio
import httpx
import pytest

from aiki_client import Client
from aiki_core import (
    AikiError,
    AuthenticationError,
    NotFoundError,
    PayloadValidationError,
    RunId,
    RunStatus,
    ServerError,
    ServerUnavailableError,
)
from aiki_core.wire import Namespace, PoolName, RunPage, RunSummary

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SUMMARY = RunSummary(
    id=RunId("r1"),
    namespace=Namespace("default"),
    workflow="orders",
    version="1",
    status=RunStatus.CANCELLED,
    pool=PoolName("default"),
    revision=0,
    attempt=1,
    created_at=T0,
    updated_at=T0,
    finished_at=T0,
)
EMPTY_PAGE = b'{"runs": [], "next_cursor": null}'


# -- a raw HTTP/1.1 server -------------------------------------------------------------


@dataclass
class Received:
    """One request as the server read it off the socket."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    """Each header line in order, its name lowercased."""
    body: bytes
    connection: int
    """The number (from 1) of the TCP connection it came on."""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(urlsplit(self.target).query)

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def header(self, name: str) -> str:
        """The value of a header that must appear exactly once."""
        values = self.values(name)
        assert len(values) == 1, f"{name}: {values} in {self.headers}"
        return values[0]


def answer(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    """A whole HTTP/1.1 response that keeps the connection open."""
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"content-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def page_reply(_: Received) -> bytes:
    return answer(200, EMPTY_PAGE)


@dataclass
class RawServer:
    """Answers each request with `reply(request)`; `None` closes the connection unanswered."""

    reply: Callable[[Received], bytes | None]
    port: int = 0
    connections: int = 0
    requests: list[Received] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._writers):
            writer.close()
        if self._handlers:
            await asyncio.wait(self._handlers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.connections += 1
        number = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the client closed the connection
                request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
                method, target, version = request_line.split(" ")
                assert version == "HTTP/1.1", request_line
                headers = [
                    (name.strip().lower(), value.strip())
                    for name, _, value in (line.partition(":") for line in lines)
                ]
                assert not any(name == "transfer-encoding" for name, _ in headers), headers
                length = sum(int(value) for name, value in headers if name == "content-length")
                body = await reader.readexactly(length)
                request = Received(method, target, headers, body, number)
                self.requests.append(request)
                response = self.reply(request)
                if response is None:
                    return
                writer.write(response)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)


@asynccontextmanager
async def serve(reply: Callable[[Received], bytes | None]) -> AsyncIterator[RawServer]:
    server = RawServer(reply)
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


def unused_port() -> int:
    """A port on 127.0.0.1 where nothing listens (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- connections that cannot be opened -------------------------------------------------


async def test_nothing_listening_raises_server_unavailable_naming_the_url() -> None:
    port = unused_port()
    async with Client(f"http://127.0.0.1:{port}", connect_retries=2) as client:
        with pytest.raises(ServerUnavailableError) as caught:
            await client.list_runs()
    assert f"http://127.0.0.1:{port}" in str(caught.value)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


@pytest.mark.parametrize(("retries", "backoff"), [(0, []), (2, [0.1, 0.2]), (3, [0.1, 0.2, 0.4])])
async def test_connect_attempts_are_retries_plus_one_with_a_doubling_backoff(
    monkeypatch: pytest.MonkeyPatch, retries: int, backoff: list[float]
) -> None:
    # a spy on the back-off: one sleep between two connect attempts
    slept: list[float] = []
    real_sleep = anyio.sleep

    async def spy(delay: float) -> None:
        slept.append(delay)
        await real_sleep(0)

    port = unused_port()
    async with Client(f"http://127.0.0.1:{port}", connect_retries=retries) as client:
        monkeypatch.setattr(anyio, "sleep", spy)
        with pytest.raises(ServerUnavailableError):
            await client.list_runs()
        monkeypatch.undo()
    assert slept == pytest.approx(backoff)


async def test_a_server_that_starts_listening_late_is_reached_by_a_retry() -> None:
    port = unused_port()
    server = RawServer(page_reply)

    async def listen_soon() -> None:
        await anyio.sleep(0.15)
        await server.start(port)

    try:
        async with (
            anyio.create_task_group() as tg,
            Client(f"http://127.0.0.1:{port}", connect_retries=5) as client,
        ):
            tg.start_soon(listen_soon)
            page = await client.list_runs()
    finally:
        await server.aclose()
    assert page == RunPage(runs=[], next_cursor=None)
    assert server.connections == 1
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/api/v1/runs")]


# -- connections that break --------------------------------------------------------------


async def test_a_post_closed_without_an_answer_is_unavailable_and_not_sent_again() -> None:
    async with serve(lambda _: None) as server:
        async with Client(f"http://127.0.0.1:{server.port}", connect_retries=3) as client:
            with pytest.raises(ServerUnavailableError) as caught:
                await client.run_handle(RunId("r1")).cancel("why")
    assert f"http://127.0.0.1:{server.port}" in str(caught.value)
    # the request reached the server: it must not be repeated as a connect failure is
    assert server.connections == 1
    assert [(r.method, r.path) for r in server.requests] == [("POST", "/api/v1/runs/r1/cancel")]


async def test_a_get_closed_without_an_answer_is_unavailable() -> None:
    async with serve(lambda _: None) as server:
        async with Client(f"http://127.0.0.1:{server.port}", connect_retries=3) as client:
            with pytest.raises(ServerUnavailableError):
                await client.run_handle(RunId("r1")).status()
    # a fresh connection's GET is not sent again; the client's connect retries add
    # nothing on top of it (a kept-alive connection's GET would be, see below)
    assert server.connections == 1
    assert {(r.method, r.path) for r in server.requests} == {("GET", "/api/v1/runs/r1")}


async def test_a_delete_whose_answer_was_lost_is_not_sent_to_the_next_replica() -> None:
    """The first replica may have deleted it: the second would answer 404 for a delete
    that succeeded. Its lost answer is the caller's to judge, as a POST's is."""
    gone = json.dumps(NotFoundError("schedule", "s1").to_wire()).encode()
    async with serve(lambda _: None) as first, serve(lambda _: answer(404, gone)) as second:
        urls = [f"http://127.0.0.1:{first.port}", f"http://127.0.0.1:{second.port}"]
        async with Client(urls) as client:
            with pytest.raises(ServerUnavailableError):
                await client.schedules.delete("s1")
    assert [(r.method, r.path) for r in first.requests] == [("DELETE", "/api/v1/schedules/s1")]
    assert second.requests == []


# -- error answers -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["socket", "httpx"])
async def test_an_aiki_404_becomes_not_found_with_its_ids(path: str) -> None:
    wire = NotFoundError("run", "r404").to_wire()
    async with serve(lambda _: answer(404, json.dumps(wire).encode())) as server:
        transport = httpx.AsyncHTTPTransport() if path == "httpx" else None
        async with Client(f"http://127.0.0.1:{server.port}", transport=transport) as client:
            with pytest.raises(NotFoundError) as caught:
                await client.run_handle(RunId("r404")).status()
    assert caught.value.message == "run 'r404' not found"
    assert caught.value.resource == "run"
    assert caught.value.resource_id == "r404"
    assert caught.value.details == {"resource": "run", "resource_id": "r404"}
    assert [r.path for r in server.requests] == ["/api/v1/runs/r404"]


@pytest.mark.parametrize("path", ["socket", "httpx"])
@pytest.mark.parametrize(
    ("status", "expected"), [(502, ServerError), (503, ServerUnavailableError)]
)
async def test_a_plain_text_5xx_becomes_the_fallback_error_with_its_text(
    path: str, status: int, expected: type[AikiError]
) -> None:
    text = b"upstream went away (proxy)"
    async with serve(lambda _: answer(status, text, "text/plain")) as server:
        transport = httpx.AsyncHTTPTransport() if path == "httpx" else None
        async with Client(f"http://127.0.0.1:{server.port}", transport=transport) as client:
            with pytest.raises(AikiError) as caught:
                await client.list_runs()
    assert type(caught.value) is expected
    assert f"HTTP {status}" in caught.value.message
    assert "upstream went away (proxy)" in caught.value.message
    assert server.connections == 1  # an answered request is never retried


@pytest.mark.parametrize("path", ["socket", "httpx"])
@pytest.mark.parametrize(
    ("status", "header", "seconds"),
    [(429, "2", 2.0), (503, "0.5", 0.5), (408, None, None), (503, "Fri, 31 Dec 1999", None)],
)
async def test_a_not_now_is_unavailable_and_carries_its_retry_after(
    path: str, status: int, header: str | None, seconds: float | None
) -> None:
    extra = "" if header is None else f"retry-after: {header}\r\n"
    reply = answer(status, b"busy", "text/plain").replace(b"\r\n\r\n", f"\r\n{extra}\r\n".encode())
    async with serve(lambda _: reply) as server:
        transport = httpx.AsyncHTTPTransport() if path == "httpx" else None
        async with Client(f"http://127.0.0.1:{server.port}", transport=transport) as client:
            with pytest.raises(ServerUnavailableError) as caught:
                await client.list_runs()
    assert caught.value.retry_after == seconds
    assert server.connections == 1  # the caller decides whether to try again


@pytest.mark.parametrize("path", ["socket", "httpx"])
async def test_a_401_becomes_authentication_error_and_is_not_retried(path: str) -> None:
    wire = AuthenticationError("the API key is not valid: malformed, unknown or revoked")
    reply = json.dumps(wire.to_wire()).encode()
    async with serve(lambda _: answer(401, reply)) as server:
        transport = httpx.AsyncHTTPTransport() if path == "httpx" else None
        async with Client(
            f"http://127.0.0.1:{server.port}", api_key="aiki_REVOKED", transport=transport
        ) as client:
            with pytest.raises(AuthenticationError) as caught:
                await client.list_runs()
    assert caught.value.message == wire.message
    assert caught.value.retryable is False
    assert [r.header("authorization") for r in server.requests] == ["Bearer aiki_REVOKED"]


@pytest.mark.parametrize(
    "api_key", ["", "aiki_x\r\nx-injected: 1", "aiki_x\n", "two words", "cl\u00e9"]
)
def test_an_api_key_that_is_no_header_token_is_refused(api_key: str) -> None:
    with pytest.raises(ValueError, match="api_key"):
        Client(api_key=api_key)


@pytest.mark.parametrize("path", ["socket", "httpx"])
@pytest.mark.parametrize(
    "run_id",
    [
        "x HTTP/1.1\r\nhost: a\r\n\r\nPOST /api/v1/runs/victim/cancel",
        "../schedules/s1",
        "a/cancel",
        "a?status=failed#",
    ],
)
async def test_an_id_from_anywhere_stays_one_path_segment_of_one_request(
    path: str, run_id: str
) -> None:
    wire = NotFoundError("run", run_id)
    reply = json.dumps(wire.to_wire()).encode()
    async with serve(lambda _: answer(404, reply)) as server:
        transport = httpx.AsyncHTTPTransport() if path == "httpx" else None
        async with Client(
            f"http://127.0.0.1:{server.port}", api_key="aiki_KEY", transport=transport
        ) as client:
            with pytest.raises(NotFoundError):
                await client.run_handle(RunId(run_id)).cancel()
    (request,) = server.requests
    assert request.method == "POST"
    assert request.target == f"/api/v1/runs/{quote(run_id, safe='')}/cancel"


async def test_a_2xx_that_is_not_the_answer_is_a_server_error() -> None:
    page = b"<html>a captive portal</html>"
    async with serve(lambda _: answer(200, page, "text/html")) as server:
        async with Client(f"http://127.0.0.1:{server.port}") as client:
            with pytest.raises(ServerError) as caught:
                await client.list_runs()
    assert "GET /runs answered 200 with no RunPage" in caught.value.message
    assert caught.value.details["body"] == page.decode()


async def test_invalid_run_filters_are_refused_before_any_request() -> None:
    async with Client("http://127.0.0.1:9") as client:  # nothing listens there
        with pytest.raises(PayloadValidationError) as caught:
            await client.list_runs(limit=10_000)
    assert [problem["loc"] for problem in caught.value.errors] == [["limit"]]


def test_a_negative_connect_retries_is_refused() -> None:
    with pytest.raises(ValueError, match="connect_retries"):
        Client(connect_retries=-1)


# -- what goes on the wire ---------------------------------------------------------------


def summary_reply(_: Received) -> bytes:
    return answer(200, SUMMARY.model_dump_json().encode())


async def test_a_post_carries_json_the_user_agent_and_the_api_key() -> None:
    async with serve(summary_reply) as server:
        async with Client(f"http://127.0.0.1:{server.port}/", api_key="KEY") as client:
            await client.run_handle(RunId("r1")).cancel("why")
    [request] = server.requests
    assert request.method == "POST"
    assert request.target == "/api/v1/runs/r1/cancel"
    assert request.header("content-type") == "application/json"
    assert request.header("user-agent").startswith("aiki-client/")
    assert request.header("authorization") == "Bearer KEY"
    assert request.header("host") == f"127.0.0.1:{server.port}"
    assert json.loads(request.body) == {"reason": "why"}
    assert request.header("content-length") == str(len(request.body))


@pytest.mark.parametrize("path", ["socket", "httpx"])
async def test_every_request_carries_the_api_key(path: str) -> None:
    def reply(request: Received) -> bytes:
        return summary_reply(request) if request.method == "POST" else page_reply(request)

    async with serve(reply) as server:
        transport = httpx.AsyncHTTPTransport() if path == "httpx" else None
        async with Client(
            f"http://127.0.0.1:{server.port}", api_key="KEY", transport=transport
        ) as client:
            await client.list_runs()
            await client.run_handle(RunId("r1")).cancel()
            await client.list_runs()
    assert [(r.method, r.header("authorization")) for r in server.requests] == [
        ("GET", "Bearer KEY"),
        ("POST", "Bearer KEY"),
        ("GET", "Bearer KEY"),
    ]


async def test_a_get_carries_its_query_and_no_body_and_no_key_unless_given() -> None:
    async with serve(page_reply) as server:
        async with Client(f"http://127.0.0.1:{server.port}") as client:
            page = await client.list_runs(
                workflow="orders", status=[RunStatus.RUNNING, RunStatus.QUEUED], limit=10
            )
    assert page == RunPage(runs=[])
    [request] = server.requests
    assert request.method == "GET"
    assert request.path == "/api/v1/runs"
    assert request.query == [
        ("workflow", "orders"),
        ("status", "running"),
        ("status", "queued"),
        ("limit", "10"),
    ]
    assert request.body == b""
    assert request.values("content-type") == []
    assert request.values("authorization") == []
    assert request.header("user-agent").startswith("aiki-client/")


async def test_a_post_through_an_httpx_transport_carries_the_same() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = SUMMARY.model_dump_json().encode() if request.method == "POST" else EMPTY_PAGE
        return httpx.Response(200, content=body)

    transport = httpx.MockTransport(handler)
    async with Client("http://aiki.test", api_key="KEY", transport=transport) as client:
        await client.run_handle(RunId("r1")).cancel("why")
        await client.list_runs(status=[RunStatus.RUNNING, RunStatus.QUEUED])
    cancel, listing = seen
    assert cancel.method == "POST"
    assert str(cancel.url) == "http://aiki.test/api/v1/runs/r1/cancel"
    assert cancel.headers.get_list("content-type") == ["application/json"]
    assert cancel.headers["user-agent"].startswith("aiki-client/")
    assert cancel.headers["authorization"] == "Bearer KEY"
    assert json.loads(cancel.content) == {"reason": "why"}
    assert listing.method == "GET"
    assert listing.url.path == "/api/v1/runs"
    # a filter left at its default (the limit) is the server's too: not sent
    assert listing.url.params.multi_items() == [("status", "running"), ("status", "queued")]
    assert "content-type" not in listing.headers
    assert listing.content == b""


async def test_an_httpx_transport_error_becomes_server_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with Client("http://aiki.test", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ServerUnavailableError) as caught:
            await client.list_runs()
    assert "http://aiki.test" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


# -- keep-alive --------------------------------------------------------------------------


def page_or_summary_reply(request: Received) -> bytes:
    return page_reply(request) if request.method == "GET" else summary_reply(request)


async def test_sequential_calls_share_one_keep_alive_connection() -> None:
    async with serve(page_or_summary_reply) as server:
        async with Client(f"http://127.0.0.1:{server.port}") as client:
            await client.list_runs()
            await client.list_runs()
            await client.run_handle(RunId("r1")).cancel()
            assert server.connections == 1
    assert [(r.method, r.connection) for r in server.requests] == [
        ("GET", 1),
        ("GET", 1),
        ("POST", 1),
    ]


def nth_reply(replies: dict[int, bytes | None]) -> Callable[[Received], bytes | None]:
    """Answer the n-th request (from 1) with `replies[n]`, else with an empty page."""
    count = 0

    def reply(request: Received) -> bytes | None:
        nonlocal count
        count += 1
        return replies.get(count, page_or_summary_reply(request))

    return reply


async def test_a_kept_alive_get_closed_unanswered_is_sent_once_more_on_a_fresh_connection() -> None:
    async with serve(nth_reply({2: None})) as server:
        async with Client(f"http://127.0.0.1:{server.port}") as client:
            await client.list_runs()
            assert await client.list_runs() == RunPage(runs=[])
    assert [(r.method, r.connection) for r in server.requests] == [
        ("GET", 1),
        ("GET", 1),
        ("GET", 2),
    ]


async def test_a_kept_alive_post_closed_unanswered_is_not_sent_again() -> None:
    async with serve(nth_reply({2: None})) as server:
        async with Client(f"http://127.0.0.1:{server.port}") as client:
            await client.list_runs()
            with pytest.raises(ServerUnavailableError):
                await client.run_handle(RunId("r1")).cancel()
    assert [(r.method, r.connection) for r in server.requests] == [("GET", 1), ("POST", 1)]


async def test_a_chunked_answer_and_connection_close_are_honoured() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        + b"".join(
            f"{len(part):x}\r\n".encode() + part + b"\r\n"
            for part in (EMPTY_PAGE[:10], EMPTY_PAGE[10:])
        )
        + b"0\r\n\r\n"
    )
    async with serve(nth_reply({1: chunked})) as server:
        async with Client(f"http://127.0.0.1:{server.port}") as client:
            assert await client.list_runs() == RunPage(runs=[])
            assert await client.list_runs() == RunPage(runs=[])
    # the first answer asked to close: the second request came on a new connection
    assert [r.connection for r in server.requests] == [1, 2]


async def test_a_connection_idle_past_the_keep_alive_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("aiki_client._socket_http.KEEPALIVE_SECONDS", 0.05)
    async with serve(page_reply) as server:
        async with Client(f"http://127.0.0.1:{server.port}") as client:
            await client.list_runs()
            await client.list_runs()
            await anyio.sleep(0.1)
            await client.list_runs()
    assert [r.connection for r in server.requests] == [1, 1, 2]


async def test_concurrent_requests_each_take_a_connection_and_come_back_to_the_pool() -> None:
    async with serve(page_reply) as server:
        async with Client(f"http://127.0.0.1:{server.port}") as client:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(client.list_runs)
            await client.list_runs()
    assert server.connections == 3
    assert len(server.requests) == 4


def test_a_base_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        Client("ftp://example.com")
