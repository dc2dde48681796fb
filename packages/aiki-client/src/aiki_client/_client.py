"""`Client`: the HTTP client of the Aiki server.

It starts runs (as the `WorkflowStarter` a workflow version needs), hands out run
handles, lists runs, manages schedules (`client.schedules`), and serves workers (as
their `WorkerApi`). Every payload passes through its codec on the way out and back.
Calls travel as frames on one WebSocket per replica (`_channel`), or as plain
requests through httpx: its keep-alive connection pool, or a transport one gives
(see `_http`); a connection that cannot be opened is tried again (the request never
reached the server, so that is always safe), and every HTTP error becomes the
`AikiError` the server named.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Self, TypeVar, overload

import httpx
from pydantic import BaseModel, ValidationError

from aiki_client.__about__ import __version__
from aiki_client._asgi_channel import asgi_opener
from aiki_client._channel import ChannelHttp, network_opener
from aiki_client._concurrency import ConcurrencyLimits
from aiki_client._endpoints import Endpoints
from aiki_client._handle import WorkflowRunHandle
from aiki_client._http import DEFAULT_TIMEOUT, Http, HttpxHttp, api_path, tls_context
from aiki_client._rate_limits import RateLimits
from aiki_client._replicas import Replicas
from aiki_client._retention import Retention
from aiki_client._schedules import Schedules
from aiki_client._sealing import seal_input
from aiki_core import (
    AikiError,
    CodecContext,
    ConsoleLogger,
    IdentityCodec,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PayloadValidationError,
    RunId,
    RunStatus,
    ServerError,
    ServerUnavailableError,
    StartRunInfo,
)
from aiki_core.sdk import fit_trace_context, intercepted, new_run_id
from aiki_core.wire import (
    CHANNEL_PATH,
    MAX_MIGRATED_PER_CALL,
    AbandonedTaskRequest,
    ClaimRequest,
    ClaimResponse,
    CreateWebhookRequest,
    CreateWebhookResponse,
    DirectivesRequest,
    DirectivesResponse,
    DryRunReceipt,
    HeartbeatRequest,
    HeartbeatResponse,
    ListRunsQuery,
    MigrateRunsRequest,
    MigrateRunsResponse,
    MigrationFilter,
    PushedTaskAnswer,
    RecordTaskRequest,
    RecordTaskResponse,
    RemoteTaskRequest,
    RunPage,
    RunSummary,
    ServerLimits,
    StartChildRequest,
    StartRunRequest,
    StartRunResponse,
    TransitionRunRequest,
    TransitionRunResponse,
    WorkerPage,
    error_from_wire,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Sequence
    from types import TracebackType

    from pydantic import JsonValue

    from aiki_client._channel import Opener
    from aiki_client._http import Cert, Verify
    from aiki_core import Interceptor, Logger, PayloadCodec
    from aiki_core.wire import AcquireRateLimitResponse, DryRunAnswer, RateLimitUse

ResultT = TypeVar("ResultT")
ModelT = TypeVar("ModelT", bound="BaseModel")


DEFAULT_URL = "http://127.0.0.1:9850"
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: nothing that could end the header


UNCHECKED_BODY_BYTES = 64 * 1024
"""Bodies up to this size are sent unchecked; a larger one is checked against the limit
the server announces (a server set below it refuses such a body itself, with 413)."""
_TRY_AGAIN = frozenset({408, 429})
"""Statuses that say "not now" rather than "never": raised as `ServerUnavailableError`."""


def _identity(value: JsonValue) -> JsonValue:
    return value


def _seconds(retry_after: str | None) -> float | None:
    """A `Retry-After` header's delay in seconds (an HTTP date counts as unknown)."""
    if retry_after is None:
        return None
    try:
        seconds = float(retry_after)
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


def largest_field(body: BaseModel) -> str:
    """The path of a request's largest part: `input`, `action.result`, `tasks[2].result`."""
    dumped: Any = body.model_dump(mode="json", by_alias=True)
    path = ""
    value: object = body
    while True:
        if isinstance(value, BaseModel):
            fields = type(value).model_fields.items()
            parts = [
                (f".{name}", getattr(value, name), dumped[field.alias or name])
                for name, field in fields
            ]
        elif isinstance(value, list) and isinstance(value[0] if value else None, BaseModel):
            parts = [(f"[{index}]", item, dumped[index]) for index, item in enumerate(value)]
        else:
            parts = []
        if not parts:  # a payload, not a part of the request's own structure
            return path.lstrip(".")
        step, value, dumped = max(parts, key=lambda part: len(json.dumps(part[2])))
        path += step


class Client:
    """Talks to an Aiki server: `async with Client("http://127.0.0.1:9850") as client`.

    `base_url` may list several replicas of one server (on one PostgreSQL database):
    `Client(["http://a:9850", "http://b:9850"])`. Calls go to the one that answered
    last; one that cannot be reached is failed over to the next, for calls that are
    safe to repeat (see the operating guide). A start is safe to repeat: the client
    mints the run's id, and the server takes a second start of that id, with the same
    workflow and input, as the first.

    `api_key` (from `aiki-server keys create`) goes with every request as
    `Authorization: Bearer <key>`: the server scopes all the client does to the key's
    namespace, and a refused key raises `AuthenticationError`. Without a key, only a
    server that holds none answers. `codec` encodes every payload (default: none).
    `interceptors` wrap each start of a run (`Interceptor.start_run`): a tracing one
    stores the caller's trace context with the run.

    Calls go on one WebSocket per replica, the channel (see the protocol design),
    opened on the first call and again after a drop; `channel=False`, a server or
    proxy that does not open it, or an event loop other than asyncio send each call
    as a plain HTTP request through httpx instead, on a pool of keep-alive HTTP/1.1
    connections per replica. A connection that cannot be opened is tried `connect_retries` more
    times, with a doubling back-off from 0.1 s. For `https://` URLs, `verify` is
    `True` (the CA bundle of `SSL_CERT_FILE`/`SSL_CERT_DIR` with `trust_env`, else
    certifi's), the path of a CA bundle (a file, or a directory), an
    `ssl.SSLContext`, or `False` (no verification: tests only); `cert` is a client
    certificate for mutual TLS: its file, or `(certfile, keyfile)` or `(certfile,
    keyfile, password)`. `trust_env` (as in httpx) takes proxies from `HTTPS_PROXY`,
    `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, and the CA bundle from the environment.
    `timeout` is a number of seconds or an `httpx.Timeout`; the default waits 10 s to
    connect and 75 s for an answer: keep the read timeout above a minute, which
    long-polls (a worker's claims, a handle's `result()`) may hold a request.

    `transport` (an httpx transport) replaces the network, e.g.
    `httpx.ASGITransport(app)` to reach an embedded server in process; it then owns
    TLS and proxies, and `verify`, `cert` and `trust_env` are unused.
    """

    def __init__(
        self,
        base_url: str | Sequence[str] = DEFAULT_URL,
        *,
        api_key: str | None = None,
        codec: PayloadCodec | None = None,
        logger: Logger | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_retries: int = 3,
        interceptors: Sequence[Interceptor] = (),
        verify: Verify = True,
        cert: Cert | None = None,
        trust_env: bool = True,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        channel: bool = True,
    ) -> None:
        if connect_retries < 0:
            raise ValueError("connect_retries must be 0 or more")
        if api_key is not None and not _TOKEN.fullmatch(api_key):
            raise ValueError("api_key must be a non-empty string of visible ASCII characters")
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("base_url needs at least one URL")
        self.base_urls = tuple(url.rstrip("/") for url in urls)
        """The server's replicas, in the order they are tried."""
        self.codec: PayloadCodec = codec or IdentityCodec()
        self.log: Logger = logger or ConsoleLogger()
        self.interceptors = tuple(interceptors)
        self.schedules = Schedules(self)
        """Create, list, pause, resume and delete schedules."""
        self.concurrency_limits = ConcurrencyLimits(self)
        """Read, set, list and clear workflows' concurrency limits."""
        self.rate_limits = RateLimits(self)
        """Define, read, list, change and delete rate limits."""
        self.endpoints = Endpoints(self)
        """Register, list and delete push endpoints; rotate their secrets."""
        self.retention = Retention(self)
        """Read, set and clear how long the namespace keeps its ended runs."""
        headers = {"user-agent": f"aiki-client/{__version__}"}
        if api_key is not None:
            headers["authorization"] = f"Bearer {api_key}"
        # one URL tries its connection again itself; several try each other in rounds
        single = len(self.base_urls) == 1
        tls = tls_context(verify, cert, trust_env=trust_env) if transport is None else True
        replicas: list[Http] = []
        for url in self.base_urls:
            api = f"{url}/api/v1"
            plain = HttpxHttp(
                api,
                headers,
                connect_retries=connect_retries if single else 0,
                transport=transport,
                verify=tls,
                trust_env=trust_env,
                timeout=timeout,
            )
            opener = _opener(api + CHANNEL_PATH, headers, transport, tls, trust_env=trust_env)
            replicas.append(
                ChannelHttp(
                    api,
                    opener if channel else None,
                    plain,
                    self.log,
                    read_timeout=httpx.Timeout(timeout).read,
                )
            )
        self._http = Replicas(replicas, connect_retries=0 if single else connect_retries)
        self._max_body_bytes: int | None = None
        """The server's body limit, once read (0: the server does not say)."""

    @property
    def base_url(self) -> str:
        """The URL of the replica calls go to now: the one that answered last."""
        return self.base_urls[self._http.current]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    # -- runs ----------------------------------------------------------------------------

    async def start_run(
        self, request: StartRunRequest, decode_result: Callable[[JsonValue], ResultT]
    ) -> WorkflowRunHandle[ResultT]:
        """Start (or find, by reference id) a run; prefer `version.start(client, payload)`."""
        run_id = request.run_id or new_run_id()
        sealed, fingerprint = seal_input(self.codec, request.input, CodecContext.run_input(run_id))
        info = StartRunInfo(request.workflow, request.version, RunId(run_id))
        info.trace_context.update(request.trace_context or {})

        async def start() -> StartRunResponse:
            outgoing = request.model_copy(
                update={
                    "run_id": run_id,
                    "input": sealed,
                    "input_hash": fingerprint,
                    "trace_context": fit_trace_context(info.trace_context),
                }
            )
            # a start sent twice (failover) is one start: the server knows its run id
            return await self._call("POST", "/runs", StartRunResponse, outgoing, repeatable=True)

        started = await intercepted(self.interceptors, lambda i: i.start_run, info, start)
        return WorkflowRunHandle(self, started.run.id, decode_result)

    @overload
    def run_handle(self, run_id: RunId) -> WorkflowRunHandle[JsonValue]: ...

    @overload
    def run_handle(
        self, run_id: RunId, decode_result: Callable[[JsonValue], ResultT]
    ) -> WorkflowRunHandle[ResultT]: ...

    def run_handle(
        self, run_id: RunId, decode_result: Callable[[JsonValue], Any] = _identity
    ) -> WorkflowRunHandle[Any]:
        """A handle on an existing run; pass the version's `decode_result` for a typed result."""
        return WorkflowRunHandle(self, run_id, decode_result)

    async def list_runs(self, query: ListRunsQuery | None = None, **filters: Any) -> RunPage:
        """One page of runs, newest first; filters as in `ListRunsQuery`."""
        if query is None:
            try:
                query = ListRunsQuery.model_validate(filters)
            except ValidationError as exc:
                raise PayloadValidationError.from_pydantic("invalid run filters", exc) from None
        params = [
            (key, str(item))
            # defaults are the server's too: a filter left unset is not sent
            for key, value in query.model_dump(mode="json", exclude_defaults=True).items()
            for item in (value if isinstance(value, list) else [value])
        ]
        return await self._call("GET", "/runs", RunPage, params=params)

    async def migrate_runs(
        self,
        workflow: str,
        from_version: str,
        to_version: str,
        *,
        run_ids: Sequence[RunId] | None = None,
        status: Sequence[RunStatus] | None = None,
        reference_id: str | None = None,
        limit: int = MAX_MIGRATED_PER_CALL,
        dry_run: bool = False,
        wait: timedelta = timedelta(seconds=30),
    ) -> MigrateRunsResponse:
        """Move in-flight runs of `workflow` from one version to another.

        All runs of `from_version` that can move (not ended, none running), or only those
        the filters name. Each keeps what it recorded: its next execution replays on
        `to_version`, reusing every recorded call the new code still makes with the same
        input. Named `run_ids` that cannot move refuse the whole migration.

        `dry_run=True` moves nothing: a live worker that serves `to_version` replays each
        run (up to `MAX_DRY_RUNS_PER_CALL`) without side effects, and `dry_runs` holds
        its reports (what each would reuse, not reuse, and the first call it would run).
        Runs not reported within `wait` are listed in `not_replayed`. With no such
        worker it raises `NoDryRunWorkerError`.
        """
        try:
            request = MigrateRunsRequest(
                workflow=workflow,
                from_version=from_version,
                to_version=to_version,
                filter=MigrationFilter(
                    run_ids=None if run_ids is None else list(run_ids),
                    status=None if status is None else list(status),
                    reference_id=reference_id,
                ),
                limit=limit,
                dry_run=dry_run,
                wait=wait,
            )
        except ValidationError as exc:
            raise PayloadValidationError.from_pydantic("invalid migration", exc) from None
        return await self._call("POST", "/migrations", MigrateRunsResponse, request)

    async def list_workers(self) -> WorkerPage:
        """The workers of the key's namespace: their triples, the runs they hold, when seen."""
        return await self._call("GET", "/workers", WorkerPage)

    # -- the worker's calls --------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> ClaimResponse:
        """Long-poll for runs to execute."""
        return await self._call("POST", "/claims", ClaimResponse, request)

    async def heartbeat(self, request: HeartbeatRequest) -> HeartbeatResponse:
        """Refresh claims; a directive per run."""
        return await self._call("POST", "/heartbeats", HeartbeatResponse, request, repeatable=True)

    async def report_abandoned_task(self, run_id: RunId, request: AbandonedTaskRequest) -> None:
        """Note in a run's history that a task attempt's thread ignored its cancellation."""
        await self._call("POST", api_path("runs", run_id, "abandoned-tasks"), RunSummary, request)

    async def directives(self, request: DirectivesRequest) -> DirectivesResponse:
        """Long-poll for directives on held runs (cancelled, paused, lost)."""
        return await self._call("POST", "/directives", DirectivesResponse, request, repeatable=True)

    async def report_dry_run(self, job_id: str, answer: DryRunAnswer) -> DryRunReceipt:
        """Report the replay of a dry-run job (or why it failed)."""
        return await self._call(
            "POST",
            api_path("dry-runs", job_id, "report"),
            DryRunReceipt,
            answer,
            repeatable=True,  # a second answer replaces the first
        )

    async def record_task(self, run_id: RunId, request: RecordTaskRequest) -> RecordTaskResponse:
        """Record one task attempt."""
        return await self._call(
            "POST",
            api_path("runs", run_id, "tasks"),
            RecordTaskResponse,
            request,
            repeatable=True,  # the same record twice is taken as once
        )

    async def call_remote_task(self, run_id: RunId, request: RemoteTaskRequest) -> PushedTaskAnswer:
        """Have the server push one task attempt of a held run to its task endpoint.

        The server waits for the endpoint's answer; the request is sent once.
        """
        return await self._call(
            "POST", api_path("runs", run_id, "remote-tasks"), PushedTaskAnswer, request
        )

    async def start_child(self, run_id: RunId, request: StartChildRequest) -> StartRunResponse:
        """Start a child of a held run (the workflow sealed its input)."""
        return await self._call(
            "POST",
            api_path("runs", run_id, "children"),
            StartRunResponse,
            request,
            repeatable=True,  # one child per address and occurrence
        )

    async def transition(
        self, run_id: RunId, request: TransitionRunRequest
    ) -> TransitionRunResponse:
        """Complete, fail, suspend or release a held run."""
        return await self._call(
            "POST", api_path("runs", run_id, "transition"), TransitionRunResponse, request
        )

    async def create_webhook(
        self, run_id: RunId, request: CreateWebhookRequest
    ) -> CreateWebhookResponse:
        """Mint a signed URL that delivers an event to a held run."""
        return await self._call(
            "POST", api_path("runs", run_id, "webhooks"), CreateWebhookResponse, request
        )

    async def acquire_rate_limit(
        self, use: RateLimitUse, request_id: str
    ) -> AcquireRateLimitResponse:
        """Take the units of one task attempt from its rate limit, or learn when they can be.

        `request_id` is the same for each retry of one request (see `rate_limits.acquire`).
        """
        return await self.rate_limits.acquire(
            use.name, units=use.units, key=use.key, request_id=request_id
        )

    # -- HTTP ----------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        answer: type[ModelT],
        body: BaseModel | None = None,
        *,
        params: Sequence[tuple[str, str]] = (),
        repeatable: bool | None = None,
    ) -> ModelT:
        """One API call: `body` out as JSON, the answer parsed straight into `answer`.

        `repeatable`: whether the call may go to another replica after its connection
        dropped mid-request (by default, a read, a PUT or a PATCH: a repeated one leaves
        and answers the same; a repeated DELETE would answer 404 for what it deleted).
        """
        content = None
        if body is not None:
            content = body.model_dump_json().encode()
            if len(content) > UNCHECKED_BODY_BYTES:
                await self._check_size(body, len(content))
        if repeatable is None:
            repeatable = method not in ("POST", "DELETE")
        status, raw, retry_after = await self._http.send(
            method, path, content, params, repeatable=repeatable
        )
        if 200 <= status < 300:
            try:
                return answer.model_validate_json(raw)
            except ValidationError as exc:  # not the Aiki server (a proxy's page, say)
                raise ServerError(
                    f"{method} {path} answered {status} with no {answer.__name__}: {exc}",
                    details={"status": status, "body": raw[:500].decode(errors="replace")},
                ) from exc
        try:
            error = json.loads(raw)
        except ValueError:
            error = {"text": raw[:500].decode(errors="replace")}
        if status in _TRY_AGAIN:  # a proxy's or gateway's "not now": worth another try
            raised: AikiError = ServerUnavailableError(f"{method} {path} answered {status}")
        else:
            raised = error_from_wire(status, error if isinstance(error, dict) else {})
        seconds = _seconds(retry_after)
        if isinstance(raised, ServerError) and seconds is not None:  # else the body's, if any
            raised.retry_after = seconds
        raise raised

    async def _check_size(self, body: BaseModel, size: int) -> None:
        """Refuse a body over the server's limit before sending it, naming its largest part.

        The limit is read once from the server; a server that does not say (an older
        one, or none reachable now) checks the body itself.
        """
        if self._max_body_bytes is None:
            try:
                limits = await self._call("GET", "/limits", ServerLimits)
            except (NotFoundError, InvalidRequestError):  # a server without the route
                self._max_body_bytes = 0
            except AikiError:
                return
            else:
                self._max_body_bytes = limits.max_body_bytes
        if 0 < self._max_body_bytes < size:
            raise PayloadTooLargeError(size, self._max_body_bytes, largest_field(body))

    def __repr__(self) -> str:
        return f"<Client {self.base_url}>"


def _opener(
    url: str,
    headers: dict[str, str],
    transport: httpx.AsyncBaseTransport | None,
    tls: ssl.SSLContext | bool,
    *,
    trust_env: bool,
) -> Opener | None:
    """How the channel at `url` is opened: over the network, or in process.

    `None` for a transport that carries no WebSocket (a mock, say): plain requests.
    """
    if transport is None:
        return network_opener(url, headers, tls=tls, trust_env=trust_env)
    if isinstance(transport, httpx.ASGITransport):
        return asgi_opener(transport.app, url, headers)
    return None
