"""The requests of every run, served without FastAPI's per-request machinery.

A run's start, a worker's claim, each task record, the run's transition and a caller's
wait for the outcome are most of the requests a busy server gets. For them, `HotPath`
(the layer inside `ApiKeyAuth`) parses the body straight into its model with pydantic's
JSON parser, and the wait's query by a strict reading, and calls the service, skipping
FastAPI's routing, dependency solving and validation, which cost about as much CPU as
the transaction itself. Everything else goes to the FastAPI app: other routes, and any
request it would read differently or refuse (a body too large, not JSON, not valid, or
of another content type; a query with anything unexpected in it), so those get the
app's documented answers (413, 400, 422). Errors of the call itself leave in the same
wire shape as from the app (`_errors.response_for`).

The FastAPI routes of these calls stay: they describe them in the OpenAPI document and
answer the requests the hot path hands on. Both call the same functions below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.requests import Request

from aiki_core import RunStatus
from aiki_core.wire import (
    ID_PATTERN,
    ClaimRequest,
    ClaimResponse,
    RecordTaskRequest,
    StartRunRequest,
    TransitionRunRequest,
    TransitionRunResponse,
)
from aiki_server._auth import NAMESPACE_SCOPE_KEY
from aiki_server._errors import response_for
from aiki_server._metrics import ROUTE_SCOPE_KEY

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pydantic import BaseModel
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from aiki_server._claims import Claims
    from aiki_server._runs import Runs
    from aiki_server._worker_writes import WorkerWrites

Answer = tuple["BaseModel", int]
"""A call's answer and its status code."""

WAIT_TIMEOUT_MS = 30_000
"""A wait's `timeout_ms` when the query names none."""
MAX_WAIT_TIMEOUT_MS = 60_000
"""The largest `timeout_ms` a wait takes."""


@dataclass(frozen=True, slots=True)
class Services:
    """What the hot calls call."""

    runs: Runs
    claims: Claims
    writes: WorkerWrites


async def start_run(services: Services, namespace: str, body: StartRunRequest) -> Answer:
    """Start a run; 200 with the run its reference id started before."""
    started = await services.runs.start_run(namespace, body)
    return started, 201 if started.created else 200


async def claim(
    services: Services, namespace: str, body: ClaimRequest, gone: Callable[[], Awaitable[bool]]
) -> Answer:
    """Long-poll for runs of the declared triples until some come or the caller is `gone`."""
    claimed = await services.claims.claim(namespace, body, gone=gone)
    return ClaimResponse(runs=claimed), 200


async def record_task(
    services: Services, namespace: str, run_id: str, body: RecordTaskRequest
) -> Answer:
    """Record one task attempt of a claimed run of `namespace`."""
    return await services.writes.record_task(namespace, run_id, body), 200


async def transition(
    services: Services, namespace: str, run_id: str, body: TransitionRunRequest
) -> Answer:
    """Complete, fail, suspend or release a claimed run of `namespace`."""
    run = await services.writes.transition(namespace, run_id, body)
    return TransitionRunResponse(run=run), 200


async def wait_for_run(
    services: Services, namespace: str, run_id: str, statuses: list[RunStatus], timeout_ms: int
) -> Answer:
    """The run once it is in one of `statuses` (any terminal one if none), or at the timeout."""
    timeout = timedelta(milliseconds=timeout_ms)
    return await services.runs.wait_for_run(namespace, run_id, statuses, timeout), 200


_ROUTE = re.compile(rf"^/api/v1/(?:(runs|claims)|runs/({ID_PATTERN})/(tasks|transition|wait))$")
"""The paths of the hot calls: a call on all runs, or on one run (its id, then the call).

A malformed run id goes on to the app, which refuses it."""
_TEMPLATES = {
    "runs": "/api/v1/runs",
    "claims": "/api/v1/claims",
    **{call: f"/api/v1/runs/{{run_id}}/{call}" for call in ("tasks", "transition", "wait")},
}
"""The route template of each call, for the metrics."""
_JSON_HEADERS = [(b"content-type", b"application/json")]
_STATUSES = {status.value: status for status in RunStatus}
_DIGITS = re.compile(r"[0-9]{1,5}")


class HotPath:
    """Serves the hot calls it reads as the app would; hands everything else to `app`.

    It sits inside `ApiKeyAuth`, which put the caller's namespace into the scope.
    """

    def __init__(self, app: ASGIApp, services: Services, max_body_bytes: int) -> None:
        self.app = app
        self.services = services
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer the call, or pass the request on unchanged."""
        match = _ROUTE.match(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        run_id, call = match[2], match[1] or match[3]
        namespace = scope[NAMESPACE_SCOPE_KEY]
        pending: Awaitable[Answer] | None = None
        if scope["method"] == "GET":
            if call == "wait" and (query := _wait_query(scope["query_string"])) is not None:
                pending = wait_for_run(self.services, namespace, run_id, *query)
        elif scope["method"] == "POST" and call != "wait" and _json_body(scope):
            messages, body = await self._read(receive)
            pending = self._post(scope, receive, namespace, run_id, call, body)
            if pending is None:  # too large, or not a valid body: the app answers it
                receive = _replay(messages, receive)
        if pending is None:
            await self.app(scope, receive, send)
            return
        scope[ROUTE_SCOPE_KEY] = _TEMPLATES[call]
        try:
            model, status = await pending
        except Exception as exc:
            await response_for(exc, scope)(scope, receive, send)
            return
        content = model.model_dump_json().encode()
        headers = [*_JSON_HEADERS, (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def _post(
        self,
        scope: Scope,
        receive: Receive,
        namespace: str,
        run_id: str | None,
        call: str,
        body: bytes | None,
    ) -> Awaitable[Answer] | None:
        """The call a POST's body makes, or None if the app must answer it."""
        if body is None:
            return None
        services = self.services
        try:
            if call == "runs":
                return start_run(services, namespace, StartRunRequest.model_validate_json(body))
            if call == "claims":
                gone = Request(scope, receive).is_disconnected
                return claim(services, namespace, ClaimRequest.model_validate_json(body), gone)
            assert run_id is not None
            if call == "tasks":
                record = RecordTaskRequest.model_validate_json(body)
                return record_task(services, namespace, run_id, record)
            action = TransitionRunRequest.model_validate_json(body)
            return transition(services, namespace, run_id, action)
        except ValidationError:
            return None

    async def _read(self, receive: Receive) -> tuple[list[Message], bytes | None]:
        """The request's messages, and its body unless it is too large."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, None
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return messages, None
            if not message.get("more_body", False):
                return messages, b"".join(m.get("body", b"") for m in messages)


def _json_body(scope: Scope) -> bool:
    """Whether the request says its body is JSON, exactly as the worker and client do.

    The app also reads `application/<x>+json` and a content type with parameters as JSON;
    those are rare, and go to it. So does a body without a content type, which the app
    refuses (422): a browser page's cross-site request may send one.
    """
    types = [value for name, value in scope["headers"] if name == b"content-type"]
    return types == [b"application/json"]


def _wait_query(query: bytes) -> tuple[list[RunStatus], int] | None:
    """A wait's statuses and timeout, if its query holds nothing else and each is valid."""
    statuses: list[RunStatus] = []
    timeout_ms: int | None = None
    pairs: list[tuple[str, str]] = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    for name, value in pairs:
        if name == "status" and value in _STATUSES:
            statuses.append(_STATUSES[value])
        elif name == "timeout_ms" and timeout_ms is None and _DIGITS.fullmatch(value):
            timeout_ms = int(value)
            if timeout_ms > MAX_WAIT_TIMEOUT_MS:
                return None
        else:
            return None
    return statuses, WAIT_TIMEOUT_MS if timeout_ms is None else timeout_ms


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives back the messages already read, then reads on."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
