"""The client's plain HTTP path (httpx) over real sockets: retries, errors, headers,
keep-alive, TLS and proxies. Every client here has no channel (`channel=False`): the
channel has tests of its own.

The servers here are raw: an `asyncio.start_server` on 127.0.0.1 that reads HTTP/1.1
requests and writes canned answers (or none), recording what it received; over TLS
with a certificate of a CA made for the test, or as a forward proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import ssl
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlsplit

import anyio
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aiki_client import Client
from aiki_client._http import Unreachable
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
    from pathlib import Path

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


def plain(*args: Any, **kwargs: Any) -> Client:
    """A client whose calls are all plain HTTP requests."""
    return Client(*args, channel=False, **kwargs)


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
    """Answers each request with `reply(request)`; `None` closes the connection unanswered,
    `b""` leaves it open unanswered.

    With `tls`, each connection is TLS from its first byte; `hellos` counts the TLS
    handshakes begun, `connections` those that completed.
    """

    reply: Callable[[Received], bytes | None]
    tls: ssl.SSLContext | None = None
    port: int = 0
    connections: int = 0
    hellos: int = 0
    requests: list[Received] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, port: int = 0) -> None:
        if self.tls is not None:
            self.tls.sni_callback = self._hello
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    def _hello(self, _: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        self.hellos += 1

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
async def serve(
    reply: Callable[[Received], bytes | None], tls: ssl.SSLContext | None = None
) -> AsyncIterator[RawServer]:
    server = RawServer(reply, tls)
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


async def test_nothing_listening_raises_unreachable_naming_the_url_and_the_refusal() -> None:
    port = unused_port()
    async with plain(f"http://127.0.0.1:{port}", connect_retries=2) as client:
        with pytest.raises(Unreachable) as caught:
            await client.list_runs()
    assert isinstance(caught.value, ServerUnavailableError)  # what callers catch
    assert f"http://127.0.0.1:{port}" in str(caught.value)
    assert "ConnectionRefusedError" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


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
    async with plain(f"http://127.0.0.1:{port}", connect_retries=retries) as client:
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
            plain(f"http://127.0.0.1:{port}", connect_retries=5) as client,
        ):
            tg.start_soon(listen_soon)
            page = await client.list_runs()
    finally:
        await server.aclose()
    assert page == RunPage(runs=[], next_cursor=None)
    assert server.connections == 1
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/api/v1/runs")]


async def test_a_post_that_could_not_connect_goes_to_the_next_replica() -> None:
    """A cancel is not safe to repeat, but one that never left may go anywhere."""
    async with serve(summary_reply) as second:
        urls = [f"http://127.0.0.1:{unused_port()}", f"http://127.0.0.1:{second.port}"]
        async with plain(urls) as client:
            await client.run_handle(RunId("r1")).cancel("why")
            assert client.base_url == urls[1]
    assert [(r.method, r.path) for r in second.requests] == [("POST", "/api/v1/runs/r1/cancel")]


# -- connections that break --------------------------------------------------------------


async def test_a_post_closed_without_an_answer_is_unavailable_and_not_sent_again() -> None:
    async with serve(lambda _: None) as server:
        async with plain(f"http://127.0.0.1:{server.port}", connect_retries=3) as client:
            with pytest.raises(ServerUnavailableError) as caught:
                await client.run_handle(RunId("r1")).cancel("why")
    assert f"http://127.0.0.1:{server.port}" in str(caught.value)
    assert not isinstance(caught.value, Unreachable)  # it left: not for another replica
    # the request reached the server: it must not be repeated as a connect failure is
    assert server.connections == 1
    assert [(r.method, r.path) for r in server.requests] == [("POST", "/api/v1/runs/r1/cancel")]


async def test_a_get_closed_without_an_answer_is_sent_once_more_then_unavailable() -> None:
    async with serve(lambda _: None) as server:
        async with plain(f"http://127.0.0.1:{server.port}", connect_retries=3) as client:
            with pytest.raises(ServerUnavailableError) as caught:
                await client.run_handle(RunId("r1")).status()
    assert not isinstance(caught.value, Unreachable)
    # a GET is safe to repeat: once, on a fresh connection; the connect retries add
    # nothing on top of it
    assert [(r.method, r.path, r.connection) for r in server.requests] == [
        ("GET", "/api/v1/runs/r1", 1),
        ("GET", "/api/v1/runs/r1", 2),
    ]


async def test_an_answer_later_than_the_read_timeout_is_unavailable_and_not_sent_again() -> None:
    # b"": nothing written, the connection held open
    async with serve(lambda _: b"") as server:
        timeout = httpx.Timeout(10.0, read=0.2)
        async with plain(f"http://127.0.0.1:{server.port}", timeout=timeout) as client:
            with pytest.raises(ServerUnavailableError) as caught:
                await client.run_handle(RunId("r1")).cancel("why")
    assert "ReadTimeout" in str(caught.value)
    assert [(r.method, r.path) for r in server.requests] == [("POST", "/api/v1/runs/r1/cancel")]


async def test_a_delete_whose_answer_was_lost_is_not_sent_to_the_next_replica() -> None:
    """The first replica may have deleted it: the second would answer 404 for a delete
    that succeeded. Its lost answer is the caller's to judge, as a POST's is."""
    gone = json.dumps(NotFoundError("schedule", "s1").to_wire()).encode()
    async with serve(lambda _: None) as first, serve(lambda _: answer(404, gone)) as second:
        urls = [f"http://127.0.0.1:{first.port}", f"http://127.0.0.1:{second.port}"]
        async with plain(urls) as client:
            with pytest.raises(ServerUnavailableError):
                await client.schedules.delete("s1")
    assert [(r.method, r.path) for r in first.requests] == [("DELETE", "/api/v1/schedules/s1")]
    assert second.requests == []


# -- error answers -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["network", "transport"])
async def test_an_aiki_404_becomes_not_found_with_its_ids(path: str) -> None:
    wire = NotFoundError("run", "r404").to_wire()
    async with serve(lambda _: answer(404, json.dumps(wire).encode())) as server:
        transport = httpx.AsyncHTTPTransport() if path == "transport" else None
        async with plain(f"http://127.0.0.1:{server.port}", transport=transport) as client:
            with pytest.raises(NotFoundError) as caught:
                await client.run_handle(RunId("r404")).status()
    assert caught.value.message == "run 'r404' not found"
    assert caught.value.resource == "run"
    assert caught.value.resource_id == "r404"
    assert caught.value.details == {"resource": "run", "resource_id": "r404"}
    assert [r.path for r in server.requests] == ["/api/v1/runs/r404"]


@pytest.mark.parametrize("path", ["network", "transport"])
@pytest.mark.parametrize(
    ("status", "expected"), [(502, ServerError), (503, ServerUnavailableError)]
)
async def test_a_plain_text_5xx_becomes_the_fallback_error_with_its_text(
    path: str, status: int, expected: type[AikiError]
) -> None:
    text = b"upstream went away (proxy)"
    async with serve(lambda _: answer(status, text, "text/plain")) as server:
        transport = httpx.AsyncHTTPTransport() if path == "transport" else None
        async with plain(f"http://127.0.0.1:{server.port}", transport=transport) as client:
            with pytest.raises(AikiError) as caught:
                await client.list_runs()
    assert type(caught.value) is expected
    assert f"HTTP {status}" in caught.value.message
    assert "upstream went away (proxy)" in caught.value.message
    assert server.connections == 1  # an answered request is never retried


@pytest.mark.parametrize("path", ["network", "transport"])
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
        transport = httpx.AsyncHTTPTransport() if path == "transport" else None
        async with plain(f"http://127.0.0.1:{server.port}", transport=transport) as client:
            with pytest.raises(ServerUnavailableError) as caught:
                await client.list_runs()
    assert caught.value.retry_after == seconds
    assert server.connections == 1  # the caller decides whether to try again


@pytest.mark.parametrize("path", ["network", "transport"])
async def test_a_401_becomes_authentication_error_and_is_not_retried(path: str) -> None:
    wire = AuthenticationError("the API key is not valid: malformed, unknown or revoked")
    reply = json.dumps(wire.to_wire()).encode()
    async with serve(lambda _: answer(401, reply)) as server:
        transport = httpx.AsyncHTTPTransport() if path == "transport" else None
        async with plain(
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
        plain(api_key=api_key)


@pytest.mark.parametrize("path", ["network", "transport"])
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
        transport = httpx.AsyncHTTPTransport() if path == "transport" else None
        async with plain(
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
        async with plain(f"http://127.0.0.1:{server.port}") as client:
            with pytest.raises(ServerError) as caught:
                await client.list_runs()
    assert "GET /runs answered 200 with no RunPage" in caught.value.message
    assert caught.value.details["body"] == page.decode()


async def test_invalid_run_filters_are_refused_before_any_request() -> None:
    async with plain("http://127.0.0.1:9") as client:  # nothing listens there
        with pytest.raises(PayloadValidationError) as caught:
            await client.list_runs(limit=10_000)
    assert [problem["loc"] for problem in caught.value.errors] == [["limit"]]


def test_a_negative_connect_retries_is_refused() -> None:
    with pytest.raises(ValueError, match="connect_retries"):
        plain(connect_retries=-1)


# -- what goes on the wire ---------------------------------------------------------------


def summary_reply(_: Received) -> bytes:
    return answer(200, SUMMARY.model_dump_json().encode())


async def test_a_post_carries_json_the_user_agent_and_the_api_key() -> None:
    async with serve(summary_reply) as server:
        async with plain(f"http://127.0.0.1:{server.port}/", api_key="KEY") as client:
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


@pytest.mark.parametrize("path", ["network", "transport"])
async def test_every_request_carries_the_api_key(path: str) -> None:
    def reply(request: Received) -> bytes:
        return summary_reply(request) if request.method == "POST" else page_reply(request)

    async with serve(reply) as server:
        transport = httpx.AsyncHTTPTransport() if path == "transport" else None
        async with plain(
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
        async with plain(f"http://127.0.0.1:{server.port}") as client:
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
    async with plain("http://aiki.test", api_key="KEY", transport=transport) as client:
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


async def test_a_transport_that_cannot_connect_is_retried_then_unreachable() -> None:
    attempts: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    transport = httpx.MockTransport(handler)
    async with plain("http://aiki.test", transport=transport, connect_retries=1) as client:
        with pytest.raises(Unreachable) as caught:
            await client.list_runs()
    assert "http://aiki.test" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(attempts) == 2


async def test_another_transport_error_is_server_unavailable_and_not_retried() -> None:
    attempts: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ReadTimeout("no answer", request=request)

    transport = httpx.MockTransport(handler)
    async with plain("http://aiki.test", transport=transport) as client:
        with pytest.raises(ServerUnavailableError) as caught:
            await client.run_handle(RunId("r1")).cancel()
    assert not isinstance(caught.value, Unreachable)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert len(attempts) == 1


# -- keep-alive --------------------------------------------------------------------------


def page_or_summary_reply(request: Received) -> bytes:
    return page_reply(request) if request.method == "GET" else summary_reply(request)


async def test_sequential_calls_share_one_keep_alive_connection() -> None:
    async with serve(page_or_summary_reply) as server:
        async with plain(f"http://127.0.0.1:{server.port}") as client:
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
        async with plain(f"http://127.0.0.1:{server.port}") as client:
            await client.list_runs()
            assert await client.list_runs() == RunPage(runs=[])
    assert [(r.method, r.connection) for r in server.requests] == [
        ("GET", 1),
        ("GET", 1),
        ("GET", 2),
    ]


async def test_a_kept_alive_post_closed_unanswered_is_not_sent_again() -> None:
    async with serve(nth_reply({2: None})) as server:
        async with plain(f"http://127.0.0.1:{server.port}") as client:
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
        async with plain(f"http://127.0.0.1:{server.port}") as client:
            assert await client.list_runs() == RunPage(runs=[])
            assert await client.list_runs() == RunPage(runs=[])
    # the first answer asked to close: the second request came on a new connection
    assert [r.connection for r in server.requests] == [1, 2]


async def test_a_connection_idle_past_the_keep_alive_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("aiki_client._http.KEEPALIVE_SECONDS", 0.05)
    async with serve(page_reply) as server:
        async with plain(f"http://127.0.0.1:{server.port}") as client:
            await client.list_runs()
            await client.list_runs()
            await anyio.sleep(0.1)
            await client.list_runs()
    assert [r.connection for r in server.requests] == [1, 1, 2]


async def test_concurrent_requests_each_take_a_connection_and_come_back_to_the_pool() -> None:
    async with serve(page_reply) as server:
        async with plain(f"http://127.0.0.1:{server.port}") as client:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(client.list_runs)
            await client.list_runs()
    assert server.connections == 3
    assert len(server.requests) == 4


def test_a_base_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        plain("ftp://example.com")


# -- TLS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA made for the test, a server certificate (localhost, 127.0.0.1) and a client's."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, client_certificate: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if client_certificate:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


def _issue(
    name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    server: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate named `name`, signed by `issuer` (itself: a CA, when `None`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_cert, signer_key = issuer if issuer is not None else (None, key)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if signer_cert is None else signer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    )
    if issuer is None:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    else:
        usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(usage, critical=True).add_extension(
            x509.ExtendedKeyUsage([purpose]), critical=False
        )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = _issue("aiki test CA", None)
    files: list[Path] = []
    for name, (cert, key) in (
        ("ca", ca),
        ("server", _issue("localhost", ca, server=True)),
        ("client", _issue("a worker", ca)),
    ):
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        files += [folder / f"{name}.pem", folder / f"{name}.key"]
    return Pki(files[0], files[2], files[3], files[4], files[5])


async def test_tls_to_a_private_ca_server_works_given_its_ca_as_verify(pki: Pki) -> None:
    verifies: list[str | Path | ssl.SSLContext] = [
        str(pki.ca),
        pki.ca,
        ssl.create_default_context(cafile=pki.ca),
    ]
    async with serve(page_reply, pki.server_context()) as server:
        for verify in verifies:
            async with plain(f"https://127.0.0.1:{server.port}", verify=verify) as client:
                assert await client.list_runs() == RunPage(runs=[])
        # and by name, the other name in its certificate
        async with plain(f"https://localhost:{server.port}", verify=pki.ca) as client:
            assert await client.list_runs() == RunPage(runs=[])
    assert [r.target for r in server.requests] == ["/api/v1/runs"] * 4


async def test_tls_to_a_private_ca_server_without_its_ca_fails_clearly_and_once(pki: Pki) -> None:
    async with serve(page_reply, pki.server_context()) as server:
        url = f"https://127.0.0.1:{server.port}"
        async with plain(url, connect_retries=3) as client:
            with pytest.raises(ServerUnavailableError) as caught:
                await client.list_runs()
    message = str(caught.value)
    assert f"{url}/api/v1 has a TLS certificate this client does not trust" in message
    assert "pass `verify=` the CA bundle that signed it" in message
    # not `Unreachable`, and not tried again: a refused certificate will not mend itself
    assert not isinstance(caught.value, Unreachable)
    assert (server.hellos, server.connections, server.requests) == (1, 0, [])


async def test_trust_env_takes_the_ca_bundle_from_ssl_cert_file(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    async with serve(page_reply, pki.server_context()) as server:
        url = f"https://127.0.0.1:{server.port}"
        async with plain(url) as client:
            assert await client.list_runs() == RunPage(runs=[])
        async with plain(url, trust_env=False) as client:  # certifi's bundle only
            with pytest.raises(ServerUnavailableError, match="does not trust"):
                await client.list_runs()
    assert len(server.requests) == 1


async def test_a_client_certificate_is_presented_for_mutual_tls(pki: Pki) -> None:
    async with serve(page_reply, pki.server_context(client_certificate=True)) as server:
        url = f"https://127.0.0.1:{server.port}"
        cert = (str(pki.client_cert), str(pki.client_key))
        async with plain(url, verify=pki.ca, cert=cert) as client:
            assert await client.list_runs() == RunPage(runs=[])
        async with plain(url, verify=pki.ca, connect_retries=0) as anonymous:
            with pytest.raises(ServerUnavailableError):
                await anonymous.list_runs()
    assert len(server.requests) == 1
    assert server.hellos >= 2


def test_a_ca_bundle_or_client_certificate_that_cannot_be_loaded_is_refused(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match="verify=.*cannot load the CA certificates"):
        plain("https://aiki.test", verify=missing)
    with pytest.raises(ValueError, match="cert=.*cannot load the client certificate"):
        plain("https://aiki.test", cert=str(missing))
    with pytest.raises(ValueError, match="load the certificate into the context"):
        plain("https://aiki.test", verify=ssl.create_default_context(), cert=str(missing))


# -- proxies -----------------------------------------------------------------------------

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's proxy settings, if any, out of the way."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


async def test_http_proxy_from_the_environment_carries_the_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the proxy answers itself: the server's name need not resolve
    async with serve(page_or_summary_reply) as proxy:
        no_proxies(monkeypatch)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        async with plain("http://aiki.invalid:9850", api_key="KEY") as client:
            assert await client.list_runs() == RunPage(runs=[])
            await client.run_handle(RunId("a/b")).cancel()
    assert [(r.method, r.target) for r in proxy.requests] == [
        ("GET", "http://aiki.invalid:9850/api/v1/runs"),
        ("POST", "http://aiki.invalid:9850/api/v1/runs/a%2Fb/cancel"),
    ]
    assert {r.header("host") for r in proxy.requests} == {"aiki.invalid:9850"}
    assert {r.header("authorization") for r in proxy.requests} == {"Bearer KEY"}


@pytest.mark.parametrize("bypass", ["trust_env=False", "NO_PROXY"])
async def test_the_environment_proxy_is_bypassed_when_asked(
    monkeypatch: pytest.MonkeyPatch, bypass: str
) -> None:
    async with serve(page_reply) as proxy, serve(page_reply) as server:
        no_proxies(monkeypatch)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        if bypass == "NO_PROXY":
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        url = f"http://127.0.0.1:{server.port}"
        async with plain(url, trust_env=bypass != "trust_env=False") as client:
            await client.list_runs()
    assert proxy.requests == []
    assert [r.target for r in server.requests] == ["/api/v1/runs"]


@asynccontextmanager
async def tunnel() -> AsyncIterator[tuple[int, list[str]]]:
    """A forward proxy that only tunnels (`CONNECT host:port`); yields its port, and the
    authorities it was asked to connect to."""
    asked: list[str] = []
    handlers: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        head = await reader.readuntil(b"\r\n\r\n")
        method, authority, _ = head.decode("latin-1").split("\r\n")[0].split(" ")
        asked.append(f"{method} {authority}")
        host, _, port = authority.rpartition(":")
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            async with anyio.create_task_group() as tg:
                tg.start_soon(pipe, reader, upstream_writer)
                tg.start_soon(pipe, upstream_reader, writer)
        finally:
            writer.close()
            upstream_writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], asked
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers)
        await server.wait_closed()


async def test_https_proxy_from_the_environment_tunnels_tls_end_to_end(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve(page_reply, pki.server_context()) as server, tunnel() as (port, asked):
        no_proxies(monkeypatch)
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        async with plain(f"https://localhost:{server.port}", verify=pki.ca) as client:
            assert await client.list_runs() == RunPage(runs=[])
            assert await client.list_runs() == RunPage(runs=[])
    assert asked == [f"CONNECT localhost:{server.port}"]  # one tunnel, kept alive
    assert [(r.target, r.connection) for r in server.requests] == [("/api/v1/runs", 1)] * 2
