"""The ASGI application: the HTTP API under `/api/v1`, with its daemons in the lifespan."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import anyio
from fastapi import APIRouter, Body, Depends, FastAPI, Header, Query, Request
from pydantic import JsonValue  # noqa: TC002 - FastAPI reads the route's annotations at runtime
from starlette.responses import JSONResponse, Response
from starlette.staticfiles import StaticFiles

from aiki_core import RunStatus  # noqa: TC001 - FastAPI reads the route's annotations at runtime
from aiki_core.wire import (
    AbandonedTaskRequest,
    AcquireRateLimitRequest,
    AcquireRateLimitResponse,
    BackfillRequest,
    BackfillResponse,
    CancelRunRequest,
    ClaimRequest,
    ClaimResponse,
    ConcurrencyLimit,
    ConcurrencyLimitPage,
    CreateEndpointRequest,
    CreateEndpointResponse,
    CreateScheduleRequest,
    CreateWebhookRequest,
    CreateWebhookResponse,
    Cursor,
    DirectivesRequest,
    DirectivesResponse,
    DryRunAnswer,
    DryRunReceipt,
    EndpointInfo,
    EndpointPage,
    ErrorResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    Identifier,
    ListRunsQuery,
    MigrateRunsRequest,
    MigrateRunsResponse,
    Name,
    PushedTaskAnswer,
    RateLimitInfo,
    RateLimitPage,
    RecordTaskRequest,
    RecordTaskResponse,
    RemoteTaskRequest,
    RetentionInfo,
    RotateEndpointSecretRequest,
    RotateEndpointSecretResponse,
    RunDetail,
    RunOutcome,
    RunPage,
    RunSummary,
    Schedule,
    SchedulePage,
    SendEventRequest,
    SendEventResponse,
    ServerLimits,
    SetConcurrencyLimitRequest,
    SetRateLimitRequest,
    SetRetentionRequest,
    StartChildRequest,
    StartRunRequest,
    StartRunResponse,
    TransitionRunRequest,
    TransitionRunResponse,
    UpdateScheduleRequest,
    WorkerPage,
    to_millis,
)
from aiki_server import _hot_path as hot_path
from aiki_server.__about__ import __version__
from aiki_server._auth import Admission, ApiKeyAuth, ApiKeys, HostCheck, caller_namespace
from aiki_server._channel import ClientChannel
from aiki_server._claims import Claims
from aiki_server._clock import Clock, from_ms, system_clock
from aiki_server._dashboard import STATIC_PACKAGE, dashboard_router
from aiki_server._directives import Directives
from aiki_server._dispatcher import Dispatcher
from aiki_server._dry_runs import DryRuns
from aiki_server._endpoints import Endpoints
from aiki_server._errors import install_error_handlers, log_failure
from aiki_server._flow import ConcurrencyLimits
from aiki_server._flow_settings import FlowSettings
from aiki_server._hot_path import HotPath
from aiki_server._limits import BodyLimitMiddleware, Limits
from aiki_server._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from aiki_server._metrics import HttpMetrics, Metrics
from aiki_server._notify import WakeHub
from aiki_server._push_health import COOL_OFF_MS, PushBackoff
from aiki_server._rate_limits import RateLimits
from aiki_server._remote_tasks import MAX_WAIT_MS, RemoteTasks
from aiki_server._retention import Retention, RetentionSettings
from aiki_server._runs import Runs
from aiki_server._schedules import Schedules
from aiki_server._storage._open import open_database
from aiki_server._timers import TimerDaemon
from aiki_server._webhooks import MIN_SECRET_LENGTH, DeliveryRate, Webhooks
from aiki_server._worker_writes import WorkerWrites

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pydantic import BaseModel

API_PREFIX = "/api/v1"

Caller = Annotated[str, Depends(caller_namespace)]
"""A route's namespace: the caller's API key's (see `_auth`)."""

_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 413, 422, 500, 503)
}
_WEBHOOK_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse} for status in (401, 403, 409, 413, 429)
}


def _found(model: type[BaseModel], what: str) -> dict[int | str, dict[str, object]]:
    """The 200 of an idempotent create: the existing resource, not a new one."""
    return {200: {"model": model, "description": what}}


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Operational settings of one server (every one has a CLI option and an env twin)."""

    claim_idle_timeout: timedelta = timedelta(seconds=90)
    """Re-queue a running run whose worker has not heartbeated for this long."""
    cleanup_timeout: timedelta = timedelta(seconds=60)
    """How long a cancelled or timed-out run's cleanup may take before the run ends anyway."""
    max_body_bytes: int = 2 * 1024 * 1024
    """Larger request bodies are refused with 413."""
    max_tasks_per_run: int = 10_000
    """Task calls one run may record; the next one fails the run (`RunLimitError`)."""
    max_payload_bytes: int = 2 * 1024 * 1024
    """The largest payload stored (a run's input or result, a task's input or result,
    an event's data), in UTF-8 bytes of its JSON; larger ones are refused with 413
    (`PayloadTooLargeError`, naming the field). The body limit bounds what one request
    carries (a transition may carry several task results); this bounds each payload."""
    max_events_per_run: int = 10_000
    """Events one run may hold; the next send is refused with 409 (`RunRecordLimitError`)."""
    max_history_per_run: int = 100_000
    """History rows one run may write (its status moves and new task calls); a worker's
    next write to it is refused with 409 and the run fails (`RunRecordLimitError`)."""
    webhook_rate_limit: int = 60
    """Deliveries one webhook URL may make a minute (in bursts of as many), per replica;
    more are refused with 429 (`TooManyRequestsError`)."""
    retention: timedelta | None = timedelta(days=30)
    """How long an ended run (with everything it holds) is kept from its end, unless its
    namespace sets its own; `None` keeps runs forever."""
    worker_retention: timedelta = timedelta(days=1)
    """How long a worker not heard from stays listed."""
    clock: Clock = field(default=system_clock)
    """Source of time in epoch milliseconds; tests may pass a controllable one."""
    webhook_secret: str | None = field(default=None, repr=False)
    """Signs webhook URLs (at least 32 characters); by default one is generated and
    kept in the database, shared by every server on it."""
    public_url: str | None = None
    """The base URL webhook URLs are given on (default: the base URL of the mint request)."""
    require_api_key: bool = False
    """Refuse requests without an API key even while the database holds no key."""
    metrics_namespace_label: bool = False
    """Label run and queue metrics with their namespace (one series per namespace)."""
    fair_share_quantum: timedelta = timedelta(seconds=1)
    """How far apart one concurrency key's queued runs are spread in the claim order,
    so other keys' runs interleave with a long backlog (see the flow control guide)."""
    priority_step: timedelta = timedelta(seconds=60)
    """How much earlier in the claim order one level of priority puts a run; a run
    waiting 9 steps goes before any newer one, whatever their priorities."""
    push_delivery: bool = True
    """Push queued runs to the registered workflow endpoints (the dispatcher); off, the
    endpoints' runs wait for a pulling worker."""
    push_cool_off: timedelta = timedelta(seconds=COOL_OFF_MS / 1000)
    """How long an endpoint's open circuit (5 failed pushes in a row) is left alone
    before one trial push; it doubles per further failure, up to ten times this."""
    remote_task_wait: timedelta = timedelta(seconds=20)
    """How long a remote task attempt's request waits for the endpoint's answer; an
    attempt not over by then goes on without the worker, and its run suspends
    (`awaiting_task`) until the server records the outcome."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names a server without API keys answers besides loopback ones and the host
    of `public_url` (any other `Host` is refused, against DNS rebinding); `"*"` answers
    any, for an app reached only in process, where no browser can send a request."""

    def __post_init__(self) -> None:
        if self.webhook_secret is not None and len(self.webhook_secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"webhook_secret must be at least {MIN_SECRET_LENGTH} characters")
        if self.public_url is not None and not self.public_url.startswith(("http://", "https://")):
            raise ValueError(
                f"public_url must be an http:// or https:// URL, got {self.public_url!r}"
            )
        FlowSettings(self.fair_share_quantum, self.priority_step)  # refuses negative ones
        if self.push_cool_off <= timedelta(0):
            raise ValueError(f"push_cool_off must be positive, got {self.push_cool_off}")
        if not timedelta(0) < self.remote_task_wait <= timedelta(milliseconds=MAX_WAIT_MS):
            raise ValueError(
                f"remote_task_wait must be positive and at most {MAX_WAIT_MS // 1000} s,"
                f" got {self.remote_task_wait}"
            )
        for name in (
            "max_tasks_per_run",
            "max_payload_bytes",
            "max_events_per_run",
            "max_history_per_run",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.webhook_rate_limit < 1:
            raise ValueError(
                f"webhook_rate_limit must be at least 1, got {self.webhook_rate_limit}"
            )
        RetentionSettings(self.retention, self.worker_retention)  # refuses negative ones


def _json(model: BaseModel, status_code: int = 200) -> Response:
    # serialize once, straight from the model: skips FastAPI's re-validation of the return
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def create_app(db_url: str, settings: ServerSettings | None = None) -> FastAPI:
    """The server as an ASGI app; its database opens (and migrates) in the app's lifespan."""
    settings = settings or ServerSettings()
    hub = WakeHub()
    db = open_database(db_url, hub)
    metrics = db.metrics = Metrics(namespace_label=settings.metrics_namespace_label)
    db.flow = FlowSettings(settings.fair_share_quantum, settings.priority_step)
    clock = settings.clock
    limits = Limits(
        settings.claim_idle_timeout,
        settings.max_tasks_per_run,
        settings.max_payload_bytes,
        settings.max_events_per_run,
        settings.max_history_per_run,
        settings.cleanup_timeout,
    )
    runs = Runs(db, hub, clock, limits)
    claims = Claims(db, hub, clock, limits)
    directives = Directives(db, hub, clock)
    dry_runs = DryRuns(db, hub, clock, limits)
    writes = WorkerWrites(db, clock, limits)
    schedules = Schedules(db, clock, limits)
    concurrency = ConcurrencyLimits(db, clock)
    rate_limits = RateLimits(db, clock)
    endpoints = Endpoints(db, clock)
    rate = DeliveryRate(settings.webhook_rate_limit, clock)
    webhooks = Webhooks(db, clock, runs, settings.webhook_secret, rate)
    retention = Retention(
        db, clock, RetentionSettings(settings.retention, settings.worker_retention)
    )
    db.cleanup_ms = limits.cleanup_ms
    timers = TimerDaemon(db, hub, clock, schedules.fire)
    backoff = PushBackoff(cool_off_ms=to_millis(settings.push_cool_off))
    dispatcher = Dispatcher(db, hub, clock, claims, writes, backoff=backoff)
    # an answer of any size a worker could record (its request and payload limits)
    # comes back to it
    remote_tasks = RemoteTasks(
        db,
        clock,
        limits,
        wait=settings.remote_task_wait.total_seconds(),
        backoff=backoff,
        max_answer_bytes=min(settings.max_body_bytes, settings.max_payload_bytes),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await db.open()
        except Exception as exc:
            log_failure("the server could not open its database", exc)
            raise
        try:
            await db.migrate()
            await webhooks.open()
            async with anyio.create_task_group() as tg:
                tg.start_soon(timers.run_forever)
                tg.start_soon(retention.run_forever)
                tg.start_soon(db.maintain)
                await tg.start(remote_tasks.run_forever)
                if settings.push_delivery:
                    tg.start_soon(dispatcher.run_forever)
                yield
                tg.cancel_scope.cancel()
        except Exception as exc:
            log_failure("the server's lifespan failed", exc)
            raise
        finally:
            await remote_tasks.aclose()
            await db.close()

    app = FastAPI(
        title="Aiki server",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    keys = ApiKeys(db, required=settings.require_api_key)
    # what the harnesses in `testing` (and the server's own tests) reach
    app.state.db = db
    app.state.hub = hub
    app.state.api_keys = keys
    app.state.timers = timers
    app.state.retention = retention
    app.state.worker_writes = writes
    app.state.runs = runs
    app.state.claims = claims
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # a valid start, claim, task record, transition or wait skips the rest of the stack
    services = hot_path.Services(runs, claims, writes)
    app.add_middleware(HotPath, services=services, max_body_bytes=settings.max_body_bytes)
    # every request but the public ones gets its namespace from its key
    admission = Admission(keys, HostCheck(settings.public_url, settings.allowed_hosts))
    app.add_middleware(ApiKeyAuth, admission=admission)
    api = _api_router(
        services,
        directives,
        dry_runs,
        schedules,
        webhooks,
        concurrency,
        public_url=settings.public_url,
        max_body_bytes=settings.max_body_bytes,
    )
    api.include_router(_rate_limit_router(rate_limits))
    api.include_router(_retention_router(retention))
    api.include_router(_remote_task_router(remote_tasks))
    api.include_router(_endpoint_router(endpoints))
    # outside the key check: refused requests count too
    prefixes = {id(route): API_PREFIX for route in api.routes}
    app.add_middleware(HttpMetrics, metrics=metrics, prefixes=prefixes)
    # a worker's calls as frames on one WebSocket, each through the stack above
    app.add_middleware(ClientChannel, admission=admission, metrics=metrics, prefix=API_PREFIX)
    app.include_router(api, prefix=API_PREFIX)
    app.include_router(dashboard_router(runs, claims, schedules, keys, db, clock))
    app.mount("/static", StaticFiles(packages=[STATIC_PACKAGE]), name="static")

    @app.get("/health", include_in_schema=False)
    async def health() -> Response:
        """200 while writes work; 503 from a failed write (an outage) until one commits again."""
        failure = db.write_path.failure
        write_path: dict[str, str] = {"status": "ok"}
        if failure is not None:
            write_path = {
                "status": "failing",
                "since": failure.since.isoformat(),
                "error": failure.error,
            }
        body = {
            "status": write_path["status"],
            "version": __version__,
            "database": db.dialect,
            "write_path": write_path,
            # due rows the timer daemon failed on too often and left alone (see the logs)
            "timers": {"set_aside": timers.set_aside},
        }
        return JSONResponse(body, status_code=200 if failure is None else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_page() -> Response:
        """This replica's metrics in Prometheus's text format (public, as `/health` is)."""
        text = await metrics.exposition(db.reader(off_loop=True), clock(), limits.claim_idle_ms)
        return Response(text, media_type=METRICS_CONTENT_TYPE)

    return app


def _api_router(
    services: hot_path.Services,
    directives: Directives,
    dry_runs: DryRuns,
    schedules: Schedules,
    webhooks: Webhooks,
    concurrency: ConcurrencyLimits,
    *,
    public_url: str | None,
    max_body_bytes: int,
) -> APIRouter:
    runs, claims, writes = services.runs, services.claims, services.writes
    router = APIRouter(responses=_ERRORS)

    # `HotPath` serves the start, claim, task record, transition and wait it reads as
    # these routes would: they answer what it hands on (the router tries routes in
    # order: the worker's calls, one per task, come first)
    @router.post("/runs/{run_id}/tasks", response_model=RecordTaskResponse, tags=["workers"])
    async def record_task(ns: Caller, run_id: Identifier, body: RecordTaskRequest) -> Response:
        """Record one task attempt of a claimed run."""
        return _json(*await hot_path.record_task(services, ns, run_id, body))

    @router.post(
        "/runs/{run_id}/transition", response_model=TransitionRunResponse, tags=["workers"]
    )
    async def transition(ns: Caller, run_id: Identifier, body: TransitionRunRequest) -> Response:
        """Complete, fail, suspend or release a claimed run."""
        return _json(*await hot_path.transition(services, ns, run_id, body))

    @router.get("/limits", response_model=ServerLimits, tags=["server"])
    async def limits(ns: Caller) -> Response:
        """The limits a client checks before it sends (the largest request body)."""
        return _json(ServerLimits(max_body_bytes=max_body_bytes))

    @router.post("/claims", response_model=ClaimResponse, tags=["workers"])
    async def claim(ns: Caller, body: ClaimRequest, request: Request) -> Response:
        """Long-poll for runs of the declared (workflow, version, pool) triples."""
        return _json(*await hot_path.claim(services, ns, body, request.is_disconnected))

    @router.get("/workers", response_model=WorkerPage, tags=["workers"])
    async def list_workers(ns: Caller) -> Response:
        """The workers of the namespace: their triples, the runs they hold, when last seen."""
        return _json(await claims.list_workers(ns))

    @router.post("/heartbeats", response_model=HeartbeatResponse, tags=["workers"])
    async def heartbeat(ns: Caller, body: HeartbeatRequest) -> Response:
        """Refresh the worker's claims; answers a directive per run."""
        return _json(await writes.heartbeat(ns, body))

    @router.post("/runs/{run_id}/abandoned-tasks", response_model=RunSummary, tags=["workers"])
    async def note_abandoned_task(
        ns: Caller, run_id: Identifier, body: AbandonedTaskRequest
    ) -> Response:
        """Note in the run's history that a task attempt's thread ignored its cancellation."""
        return _json(await writes.note_abandoned(ns, run_id, body))

    @router.post("/directives", response_model=DirectivesResponse, tags=["workers"])
    async def poll_directives(ns: Caller, body: DirectivesRequest, request: Request) -> Response:
        """Long-poll until a held run calls for another directive, or a dry run comes."""
        return _json(await directives.poll(ns, body, gone=request.is_disconnected))

    @router.post("/dry-runs/{job_id}/report", response_model=DryRunReceipt, tags=["workers"])
    async def report_dry_run(ns: Caller, job_id: Identifier, body: DryRunAnswer) -> Response:
        """Report the replay of a dry-run job handed to this worker (or why it failed)."""
        return _json(await dry_runs.report(ns, job_id, body))

    @router.post(
        "/runs/{run_id}/children",
        response_model=StartRunResponse,
        status_code=201,
        tags=["workers"],
        responses=_found(StartRunResponse, "The child this call started before"),
    )
    async def start_child(ns: Caller, run_id: Identifier, body: StartChildRequest) -> Response:
        """Start a child run of a claimed run."""
        started = await writes.start_child(ns, run_id, body)
        return _json(started, 201 if started.created else 200)

    @router.post(
        "/runs/{run_id}/webhooks",
        response_model=CreateWebhookResponse,
        status_code=201,
        tags=["workers"],
    )
    async def create_webhook(
        ns: Caller, run_id: Identifier, body: CreateWebhookRequest, request: Request
    ) -> Response:
        """Mint a signed URL that delivers the event `event` to a claimed run."""
        minted = await webhooks.mint(ns, run_id, body)
        route = request.app.url_path_for("deliver_webhook", webhook_id=minted.webhook_id)
        path = f"{route}?{minted.query}"
        base = (public_url or str(request.base_url)).rstrip("/")
        created = CreateWebhookResponse(
            webhook_id=minted.webhook_id,
            path=path,
            url=base + path,
            expires_at=from_ms(minted.expires_at),
        )
        return _json(created, 201)

    @router.post(
        "/runs",
        response_model=StartRunResponse,
        status_code=201,
        tags=["runs"],
        responses=_found(StartRunResponse, "The run its reference id started before"),
    )
    async def start_run(ns: Caller, body: StartRunRequest) -> Response:
        """Start a run; an existing run with the same reference id answers 200."""
        return _json(*await hot_path.start_run(services, ns, body))

    @router.get("/runs", response_model=RunPage, tags=["runs"])
    async def list_runs(ns: Caller, query: Annotated[ListRunsQuery, Query()]) -> Response:
        """Runs newest first, with filters and keyset pagination."""
        return _json(await runs.list_runs(ns, query))

    @router.post("/migrations", response_model=MigrateRunsResponse, tags=["runs"])
    async def migrate_runs(ns: Caller, body: MigrateRunsRequest) -> Response:
        """Move in-flight runs of a workflow to another version; they keep their records.

        A dry run moves nothing: a live worker of the new version replays each run and
        reports what it would reuse.
        """
        if body.dry_run:
            return _json(await dry_runs.dry_run(ns, body))
        return _json(await runs.migrate_runs(ns, body))

    @router.get("/runs/{run_id}", response_model=RunDetail, tags=["runs"])
    async def get_run(ns: Caller, run_id: Identifier) -> Response:
        """A run with its tasks, sleeps, events, children and history."""
        return _json(await runs.get_run(ns, run_id))

    @router.get("/runs/{run_id}/wait", response_model=RunOutcome, tags=["runs"])
    async def wait_for_run(
        ns: Caller,
        run_id: Identifier,
        status: Annotated[list[RunStatus] | None, Query()] = None,
        timeout_ms: Annotated[
            int, Query(ge=0, le=hot_path.MAX_WAIT_TIMEOUT_MS)
        ] = hot_path.WAIT_TIMEOUT_MS,
    ) -> Response:
        """Long-poll until the run reaches one of `status` (default: any terminal one).

        Answers the run with its result or error, or as it is when `timeout_ms` ran out.
        """
        return _json(*await hot_path.wait_for_run(services, ns, run_id, status or [], timeout_ms))

    @router.post("/runs/{run_id}/cancel", response_model=RunSummary, tags=["runs"])
    async def cancel_run(
        ns: Caller, run_id: Identifier, body: CancelRunRequest | None = None
    ) -> Response:
        """Cancel the run and its live descendants."""
        reason = body.reason if body is not None else None
        return _json(await runs.cancel_run(ns, run_id, reason))

    @router.post("/runs/{run_id}/pause", response_model=RunSummary, tags=["runs"])
    async def pause_run(ns: Caller, run_id: Identifier) -> Response:
        """Hold the run where it is."""
        return _json(await runs.pause_run(ns, run_id))

    @router.post("/runs/{run_id}/resume", response_model=RunSummary, tags=["runs"])
    async def resume_run(ns: Caller, run_id: Identifier) -> Response:
        """Release a paused run."""
        return _json(await runs.resume_run(ns, run_id))

    @router.post("/runs/{run_id}/wake", response_model=RunSummary, tags=["runs"])
    async def wake_run(ns: Caller, run_id: Identifier) -> Response:
        """End the run's sleep early."""
        return _json(await runs.wake_run(ns, run_id))

    @router.post("/runs/{run_id}/events", response_model=SendEventResponse, tags=["runs"])
    async def send_event(ns: Caller, run_id: Identifier, body: SendEventRequest) -> Response:
        """Deliver an event to the run (once per reference id)."""
        return _json(await runs.send_event(ns, run_id, body))

    @router.post(
        "/schedules",
        response_model=Schedule,
        status_code=201,
        tags=["schedules"],
        responses=_found(Schedule, "The schedule of that name, with the same definition"),
    )
    async def create_schedule(ns: Caller, body: CreateScheduleRequest) -> Response:
        """Create a schedule; the same definition under its name again answers 200."""
        schedule, created = await schedules.create(ns, body)
        return _json(schedule, 201 if created else 200)

    @router.get("/schedules", response_model=SchedulePage, tags=["schedules"])
    async def list_schedules(
        ns: Caller,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Cursor | None = None,
    ) -> Response:
        """Schedules newest first, with keyset pagination."""
        return _json(await schedules.list(ns, limit, cursor))

    @router.get("/schedules/{schedule_id}", response_model=Schedule, tags=["schedules"])
    async def get_schedule(ns: Caller, schedule_id: Identifier) -> Response:
        """One schedule, with its next fire time and last run."""
        return _json(await schedules.get(ns, schedule_id))

    @router.post("/schedules/{schedule_id}/pause", response_model=Schedule, tags=["schedules"])
    async def pause_schedule(ns: Caller, schedule_id: Identifier) -> Response:
        """Stop firing the schedule."""
        return _json(await schedules.pause(ns, schedule_id))

    @router.post("/schedules/{schedule_id}/resume", response_model=Schedule, tags=["schedules"])
    async def resume_schedule(ns: Caller, schedule_id: Identifier) -> Response:
        """Fire again from the first occurrence after now."""
        return _json(await schedules.resume(ns, schedule_id))

    @router.patch("/schedules/{schedule_id}", response_model=Schedule, tags=["schedules"])
    async def update_schedule(
        ns: Caller, schedule_id: Identifier, body: UpdateScheduleRequest
    ) -> Response:
        """Change the schedule in place (a field left out keeps its value); its runs stay."""
        return _json(await schedules.update(ns, schedule_id, body))

    @router.post(
        "/schedules/{schedule_id}/backfill", response_model=BackfillResponse, tags=["schedules"]
    )
    async def backfill_schedule(
        ns: Caller, schedule_id: Identifier, body: BackfillRequest
    ) -> Response:
        """Start the run of each past occurrence in [start, end), once per occurrence."""
        return _json(await schedules.backfill(ns, schedule_id, body))

    @router.delete("/schedules/{schedule_id}", response_model=Schedule, tags=["schedules"])
    async def delete_schedule(ns: Caller, schedule_id: Identifier) -> Response:
        """Delete the schedule (its runs stay); answers it as it was."""
        return _json(await schedules.delete(ns, schedule_id))

    @router.get("/concurrency-limits", response_model=ConcurrencyLimitPage, tags=["concurrency"])
    async def list_concurrency_limits(ns: Caller) -> Response:
        """Every concurrency limit of the namespace, by workflow name."""
        return _json(await concurrency.list(ns))

    @router.get(
        "/concurrency-limits/{workflow:path}",
        response_model=ConcurrencyLimit,
        tags=["concurrency"],
    )
    async def get_concurrency_limit(ns: Caller, workflow: Name) -> Response:
        """The concurrency limit in effect for the workflow (all its versions)."""
        return _json(await concurrency.get(ns, workflow))

    @router.put(
        "/concurrency-limits/{workflow:path}",
        response_model=ConcurrencyLimit,
        tags=["concurrency"],
    )
    async def set_concurrency_limit(
        ns: Caller, workflow: Name, body: SetConcurrencyLimitRequest
    ) -> Response:
        """Set the operator's limit: it wins over the code's until deleted; next claim on."""
        return _json(await concurrency.set(ns, workflow, body))

    @router.delete(
        "/concurrency-limits/{workflow:path}",
        response_model=ConcurrencyLimit,
        tags=["concurrency"],
    )
    async def clear_concurrency_limit(ns: Caller, workflow: Name) -> Response:
        """Delete the limit (answered as it was); the next start's declaration applies."""
        return _json(await concurrency.clear(ns, workflow))

    @router.post(
        "/webhooks/{webhook_id}",
        response_model=SendEventResponse,
        tags=["webhooks"],
        responses=_WEBHOOK_ERRORS,
    )
    async def deliver_webhook(
        webhook_id: Identifier,
        data: Annotated[JsonValue, Body()] = None,
        expires: str | None = None,
        signature: str | None = None,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
    ) -> Response:
        """Deliver the JSON body as the webhook's event; the signed URL is the credential.

        401 without `expires` or `signature`; 403 for an unknown webhook, a wrong
        signature or an expired URL; 404 for an id no webhook can have; 422 for a body
        that does not match the event's schema. A repeated `Idempotency-Key` is
        answered as a duplicate.
        """
        return _json(await webhooks.deliver(webhook_id, expires, signature, data, idempotency_key))

    return router


def _rate_limit_router(rate_limits: RateLimits) -> APIRouter:
    router = APIRouter(prefix="/rate-limits", tags=["rate limits"], responses=_ERRORS)

    @router.get("", response_model=RateLimitPage)
    async def list_rate_limits(ns: Caller) -> Response:
        """The rate limits of the namespace, by name."""
        return _json(await rate_limits.list(ns))

    @router.put("/{name}", response_model=RateLimitInfo)
    async def set_rate_limit(ns: Caller, name: Name, body: SetRateLimitRequest) -> Response:
        """Define the rate limit `name`, or change it (from each key's next grant on)."""
        return _json(await rate_limits.set(ns, name, body))

    @router.get("/{name}", response_model=RateLimitInfo)
    async def get_rate_limit(ns: Caller, name: Name) -> Response:
        """One rate limit (404 `rate_limit_not_found` if it is not defined)."""
        return _json(await rate_limits.get(ns, name))

    @router.delete("/{name}", response_model=RateLimitInfo)
    async def delete_rate_limit(ns: Caller, name: Name) -> Response:
        """Delete the rate limit and the budgets of its keys; the limit as it was."""
        return _json(await rate_limits.delete(ns, name))

    @router.post("/{name}/acquire", response_model=AcquireRateLimitResponse)
    async def acquire_rate_limit(ns: Caller, name: Name, body: AcquireRateLimitRequest) -> Response:
        """Take `units` from the budget of `key` now, or learn when they can be had.

        Nothing is taken unless `granted`; a request for more units than the limit
        has is a 409 `conflict`, an undefined limit a 404 `rate_limit_not_found`.
        """
        grant = await rate_limits.acquire(ns, name, body.units, body.key, body.request_id)
        return _json(grant.wire())

    return router


def _retention_router(retention: Retention) -> APIRouter:
    router = APIRouter(prefix="/retention", tags=["retention"], responses=_ERRORS)

    @router.get("", response_model=RetentionInfo)
    async def get_retention(ns: Caller) -> Response:
        """How long the namespace keeps its ended runs, and whether that is its own setting."""
        return _json(await retention.get(ns))

    @router.put("", response_model=RetentionInfo)
    async def set_retention(ns: Caller, body: SetRetentionRequest) -> Response:
        """Keep the namespace's ended runs this long from their end (`null`: forever).

        It wins over the server's setting until cleared, from the next sweep on.
        """
        return _json(await retention.set(ns, body))

    @router.delete("", response_model=RetentionInfo)
    async def clear_retention(ns: Caller) -> Response:
        """Drop the namespace's own retention: the server's applies again."""
        return _json(await retention.clear(ns))

    return router


def _remote_task_router(remote_tasks: RemoteTasks) -> APIRouter:
    router = APIRouter(tags=["workers"], responses=_ERRORS)

    @router.post("/runs/{run_id}/remote-tasks", response_model=PushedTaskAnswer)
    async def call_remote_task(ns: Caller, run_id: Identifier, body: RemoteTaskRequest) -> Response:
        """Push one task attempt of a claimed run to a task endpoint serving the task.

        The answer is the endpoint's: the attempt's result or error, for the worker to
        record. One not back within the server's wait (`remote_task_wait`) is
        `pending`: the attempt is recorded as running, the server keeps pushing it and
        records its outcome, and the worker suspends the run on it (`AwaitTask`).
        When no endpoint could take it (none serves the task, each is failing or busy,
        or the push failed), a failed answer whose retryable error is a
        `server_unavailable` naming the task and the endpoint: the task's retry policy
        decides.
        """
        return _json(await remote_tasks.call(ns, run_id, body))

    return router


def _endpoint_router(endpoints: Endpoints) -> APIRouter:
    router = APIRouter(prefix="/endpoints", tags=["endpoints"], responses=_ERRORS)

    @router.post("", response_model=CreateEndpointResponse, status_code=201)
    async def create_endpoint(ns: Caller, body: CreateEndpointRequest) -> Response:
        """Register a URL the server pushes runs or task attempts to.

        The answer holds the endpoint's signing secret: it is shown this once.
        """
        return _json(await endpoints.create(ns, body), 201)

    @router.get("", response_model=EndpointPage)
    async def list_endpoints(ns: Caller) -> Response:
        """The endpoints of the namespace, oldest first, with the health of their pushes."""
        return _json(await endpoints.list(ns))

    @router.get("/{endpoint_id}", response_model=EndpointInfo)
    async def get_endpoint(ns: Caller, endpoint_id: Identifier) -> Response:
        """One endpoint (its secrets' key ids, never the secrets)."""
        return _json(await endpoints.get(ns, endpoint_id))

    @router.delete("/{endpoint_id}", response_model=EndpointInfo)
    async def delete_endpoint(ns: Caller, endpoint_id: Identifier) -> Response:
        """Delete the endpoint: nothing more is pushed to it. The endpoint as it was."""
        return _json(await endpoints.delete(ns, endpoint_id))

    @router.post(
        "/{endpoint_id}/secrets", response_model=RotateEndpointSecretResponse, status_code=201
    )
    async def rotate_endpoint_secret(
        ns: Caller, endpoint_id: Identifier, body: RotateEndpointSecretRequest | None = None
    ) -> Response:
        """Sign pushes with a new secret, shown this once.

        The previous secret signs too until `previous_expires_in` has passed (0: it
        stops now); one rotated out before is dropped.
        """
        rotation = body if body is not None else RotateEndpointSecretRequest()
        return _json(await endpoints.rotate_secret(ns, endpoint_id, rotation), 201)

    return router
