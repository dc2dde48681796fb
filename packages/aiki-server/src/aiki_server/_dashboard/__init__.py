"""The dashboard: server-rendered pages at `/` that read through the API's own queries.

Pages are Jinja2 templates shipped in the wheel with a small stylesheet and script
(`templates/`, `static/`); no build step. Each page asks the same services the API's
routes do (`Runs.list_runs`, `Runs.get_run`, `Runs.cancel_run`, ...), in the namespace
of the viewer:

- a server without API keys follows the API's rule: open, in the namespace
  `default`, to requests addressed to it by a loopback name or its public URL
  (`ApiKeyAuth` checks the `Host` before any page);
- once it holds keys, `/login` takes a key and keeps a session cookie (see
  `_session`); the pages then show the key's namespace only, and another
  namespace's run is a 404, as in the API.

Every action (cancel, pause, resume, wake, send an event) is a POST form carrying
the session's CSRF token, confirmed in a dialog first. `/workers` shows what
`Claims.list_workers` answers `GET /api/v1/workers`; `/queues` counts the queued
runs with the query of the queue metrics (`Claims.list_queues`), and marks the
triples no live worker serves; `/schedules` lists and pauses or resumes through
`Schedules`, as `/api/v1/schedules` does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import TypeAdapter, ValidationError
from starlette.responses import HTMLResponse, RedirectResponse, Response

from aiki_core import (
    ConflictError,
    IllegalTransitionError,
    NotFoundError,
    RunStatus,
)
from aiki_core.wire import (
    DEFAULT_NAMESPACE,
    RUN_TERMINAL_STATUSES,
    Cursor,
    ListRunsQuery,
    SendEventRequest,
)
from aiki_server._api_keys import hash_key, is_well_formed
from aiki_server._clock import from_ms
from aiki_server._dashboard import _views as views
from aiki_server._dashboard._session import Session, Sessions

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiki_core.wire import RunDetail, RunSummary
    from aiki_server._auth import ApiKeys
    from aiki_server._claims import Claims
    from aiki_server._clock import Clock
    from aiki_server._runs import Runs
    from aiki_server._schedules import Schedules
    from aiki_server._storage._database import Database

__all__ = ["STATIC_PACKAGE", "dashboard_router"]

STATIC_PACKAGE = ("aiki_server._dashboard", "static")
"""Where the stylesheet and script are, for the app's `/static` mount."""

_SINCE = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}
"""The time filter's choices: runs created in the last hour, day or week."""
_ACTIONS = ("cancel", "pause", "resume", "wake")
_DONE = {
    "cancel": "Run cancelled.",
    "pause": "Pause requested.",
    "resume": "Run resumed.",
    "wake": "Run woken.",
    "event": "Event sent.",
}
_SCHEDULE_ACTIONS = {"pause": "Schedule paused.", "resume": "Schedule resumed."}
_SCHEDULES_PER_PAGE = 50
_CURSOR: TypeAdapter[str | None] = TypeAdapter(Cursor | None)
_SAFE_NEXT = re.compile(r"^/(?!/)[^\s\\]*$")
_MAX_FORM_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class _Viewer:
    """Who looks: the namespace they see, their session, and whether a key logged them in."""

    namespace: str
    session: Session
    keyed: bool
    new_session: bool


def dashboard_router(
    runs: Runs, claims: Claims, schedules: Schedules, keys: ApiKeys, db: Database, clock: Clock
) -> APIRouter:
    """The dashboard's pages and forms."""
    router = APIRouter(include_in_schema=False)
    sessions = Sessions(db, clock)
    env = Environment(
        loader=PackageLoader("aiki_server._dashboard", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        duration=views.duration,
        timestamp=views.timestamp,
        between=views.between,
        error_line=views.error_line,
        is_sealed=views.is_sealed,
        pretty_json=views.pretty_json,
    )

    async def render(
        request: Request, viewer: _Viewer | None, name: str, status_code: int = 200, **ctx: Any
    ) -> Response:
        session = viewer.session if viewer is not None else sessions.new(None)
        html = env.get_template(name).render(
            request=request,
            viewer=viewer,
            csrf=await sessions.csrf_token(session),
            now=from_ms(clock()),
            **ctx,
        )
        response = HTMLResponse(html, status_code=status_code)
        response.headers["cache-control"] = "no-store"
        response.headers["x-frame-options"] = "DENY"
        if viewer is None or viewer.new_session:
            await sessions.set_cookie(request, response, session)
        return response

    async def viewer_of(request: Request) -> _Viewer | None:
        """The viewer, or `None` when a key is required and the session has none."""
        session = await sessions.read(request)
        if not await keys.required():
            if session is None:
                return _Viewer(DEFAULT_NAMESPACE, sessions.new(None), keyed=False, new_session=True)
            return _Viewer(DEFAULT_NAMESPACE, session, keyed=False, new_session=False)
        if session is None or session.key_hash is None:
            return None
        namespace = await keys.namespace_of_hash(session.key_hash)
        if namespace is None:  # revoked since the login
            return None
        return _Viewer(namespace, session, keyed=True, new_session=False)

    def to_login(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)

    async def confirmed_form(request: Request) -> tuple[_Viewer, dict[str, str]] | Response:
        """The viewer and the fields of a form whose CSRF token holds; else the answer."""
        viewer = await viewer_of(request)
        if viewer is None:
            return to_login(request)
        form = await _form(request)
        if not await sessions.csrf_ok(await sessions.read(request), form.get("csrf")):
            return await refuse_form(request, viewer)
        return viewer, form

    def not_found(request: Request, viewer: _Viewer, what: str) -> Awaitable[Response]:
        return render(request, viewer, "error.html", 404, title="Not found", message=what)

    @router.get("/", response_class=HTMLResponse)
    async def runs_page(request: Request) -> Response:
        """The runs, newest first, with their counts by status, filters and pages."""
        viewer = await viewer_of(request)
        if viewer is None:
            return to_login(request)
        filters = {
            name: value
            for name in (
                "workflow",
                "version",
                "reference_id",
                "concurrency_key",
                "since",
                "unserved",
            )
            if (value := request.query_params.get(name, "").strip())
        }
        statuses = [s for s in request.query_params.getlist("status") if s]
        cursor = request.query_params.get("cursor") or None
        try:
            since = _SINCE.get(filters.get("since", ""))
            query = ListRunsQuery.model_validate(
                {
                    "workflow": filters.get("workflow"),
                    "version": filters.get("version"),
                    "reference_id": filters.get("reference_id"),
                    "concurrency_key": filters.get("concurrency_key"),
                    "unserved": filters.get("unserved") == "1",
                    "status": statuses or None,
                    "created_after": None if since is None else from_ms(clock()) - since,
                    "cursor": cursor,
                }
            )
        except ValidationError as exc:
            problem = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
            return await render(
                request, viewer, "error.html", 400, title="Invalid filter", message=problem
            )
        page = await runs.list_runs(viewer.namespace, query)
        counts = await runs.count_by_status(viewer.namespace, query)

        def link(**changes: str | list[str] | None) -> str:
            params: dict[str, str | list[str]] = {**filters, "status": statuses}
            for name, value in changes.items():
                if value is None:
                    params.pop(name, None)
                else:
                    params[name] = value
            qs = urlencode({k: v for k, v in params.items() if v}, doseq=True)
            return "/" + (f"?{qs}" if qs else "")

        return await render(
            request,
            viewer,
            "runs.html",
            page=page,
            counts=counts,
            total=sum(counts.values()),
            filters=filters,
            statuses=statuses,
            all_statuses=list(RunStatus),
            since_choices=list(_SINCE),
            cursor=cursor,
            link=link,
            refresh=True,
        )

    async def show_run(
        request: Request, viewer: _Viewer, run_id: str, status_code: int = 200, **ctx: Any
    ) -> Response:
        try:
            run = await runs.get_run(viewer.namespace, run_id)
        except NotFoundError:
            return await not_found(request, viewer, f"There is no run {run_id}.")
        now = from_ms(clock())
        live = run.status not in RUN_TERMINAL_STATUSES
        done = request.query_params.get("done", "")
        refused = request.query_params.get("refused", "")
        context: dict[str, Any] = {"event_error": None, "event_name": "", "event_data": ""}
        return await render(
            request,
            viewer,
            "run.html",
            status_code,
            run=run,
            waiting=views.waiting_for(run),
            timeline=views.timeline(run, now),
            actions=_actions_for(run, live=live),
            notice=_DONE.get(done),
            refused=refused if refused in _ACTIONS else None,
            refresh=live and status_code == 200,
            **(context | ctx),
        )

    def refuse_form(request: Request, viewer: _Viewer) -> Awaitable[Response]:
        return render(
            request,
            viewer,
            "error.html",
            403,
            title="Refused",
            message="This form has expired or did not come from this dashboard."
            " Reload the page and try again.",
        )

    @router.get("/runs/{run_id}", response_class=HTMLResponse)
    async def run_page(request: Request, run_id: str) -> Response:
        """One run: its status and waits, task timeline, payloads, events, children, history."""
        viewer = await viewer_of(request)
        if viewer is None:
            return to_login(request)
        return await show_run(request, viewer, run_id)

    @router.post("/runs/{run_id}/event")
    async def send_event(request: Request, run_id: str) -> Response:
        """Send the run an event (name and JSON data) from a confirmed form with the CSRF token."""
        checked = await confirmed_form(request)
        if isinstance(checked, Response):
            return checked
        viewer, form = checked
        name = form.get("name", "").strip()
        text = form.get("data", "").strip()
        try:
            data = json.loads(text) if text else None
            event = SendEventRequest.model_validate({"name": name, "data": data})
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            problem = f"The data is not valid JSON: {exc.msg} ({where})."
        except ValidationError as exc:
            problem = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        else:
            try:
                await runs.send_event(viewer.namespace, run_id, event)
            except NotFoundError:
                return await not_found(request, viewer, f"There is no run {run_id}.")
            except ConflictError as exc:
                problem = exc.message
            else:
                return RedirectResponse(f"/runs/{run_id}?done=event", status_code=303)
        return await show_run(
            request,
            viewer,
            run_id,
            400,
            event_error=f"Nothing was sent. {problem}",
            event_name=name,
            event_data=text,
        )

    @router.post("/runs/{run_id}/{action}")
    async def run_action(request: Request, run_id: str, action: str) -> Response:
        """Cancel, pause, resume or wake the run, from a confirmed form with the CSRF token."""
        checked = await confirmed_form(request)
        if isinstance(checked, Response):
            return checked
        viewer, form = checked
        if action not in _ACTIONS:
            return await not_found(request, viewer, f"There is no action {action!r}.")
        ns = viewer.namespace
        operations: dict[str, Callable[[], Awaitable[RunSummary]]] = {
            "cancel": lambda: runs.cancel_run(ns, run_id, "cancelled from the dashboard"),
            "pause": lambda: runs.pause_run(ns, run_id),
            "resume": lambda: runs.resume_run(ns, run_id),
            "wake": lambda: runs.wake_run(ns, run_id),
        }
        try:
            await operations[action]()
        except NotFoundError:
            return await not_found(request, viewer, f"There is no run {run_id}.")
        except IllegalTransitionError:
            return RedirectResponse(f"/runs/{run_id}?refused={action}", status_code=303)
        return RedirectResponse(f"/runs/{run_id}?done={action}", status_code=303)

    @router.get("/workers", response_class=HTMLResponse)
    async def workers_page(request: Request) -> Response:
        """The namespace's workers: what each serves, the runs it holds, when last seen."""
        viewer = await viewer_of(request)
        if viewer is None:
            return to_login(request)
        page = await claims.list_workers(viewer.namespace)
        return await render(request, viewer, "workers.html", workers=page.workers, refresh=True)

    @router.get("/queues", response_class=HTMLResponse)
    async def queues_page(request: Request) -> Response:
        """Queued runs per workflow, version and pool; those no live worker serves stand out."""
        viewer = await viewer_of(request)
        if viewer is None:
            return to_login(request)
        queues = await claims.list_queues(viewer.namespace)
        served = {
            (c.workflow, c.version, c.pool)
            for worker in (await claims.list_workers(viewer.namespace)).workers
            if worker.live
            for c in worker.capabilities
        }
        return await render(
            request,
            viewer,
            "queues.html",
            queues=queues,
            unserved={(q.workflow, q.version, q.pool) for q in queues} - served,
            refresh=True,
        )

    @router.get("/schedules", response_class=HTMLResponse)
    async def schedules_page(request: Request) -> Response:
        """The schedules, newest first: cadence, next occurrence, last run; pause or resume."""
        viewer = await viewer_of(request)
        if viewer is None:
            return to_login(request)
        cursor = request.query_params.get("cursor") or None
        try:
            _CURSOR.validate_python(cursor)
        except ValidationError:
            return await render(
                request, viewer, "error.html", 400, title="Invalid page", message="bad cursor"
            )
        page = await schedules.list(viewer.namespace, _SCHEDULES_PER_PAGE, cursor)
        return await render(
            request,
            viewer,
            "schedules.html",
            page=page,
            cursor=cursor,
            notice=_SCHEDULE_ACTIONS.get(request.query_params.get("done", "")),
        )

    @router.post("/schedules/{schedule_id}/{action}")
    async def schedule_action(request: Request, schedule_id: str, action: str) -> Response:
        """Pause or resume a schedule, from a confirmed form with the CSRF token."""
        checked = await confirmed_form(request)
        if isinstance(checked, Response):
            return checked
        viewer, form = checked
        if action not in _SCHEDULE_ACTIONS:
            return await not_found(request, viewer, f"There is no action {action!r}.")
        operate = schedules.pause if action == "pause" else schedules.resume
        try:
            await operate(viewer.namespace, schedule_id)
        except NotFoundError:
            return await not_found(request, viewer, f"There is no schedule {schedule_id}.")
        return RedirectResponse(f"/schedules?done={action}", status_code=303)

    @router.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request) -> Response:
        """Ask for an API key (straight to the runs when the server holds none)."""
        if not await keys.required():
            return RedirectResponse("/", status_code=303)
        return await render(request, None, "login.html", next=_next(request), error=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        """Check the key; a good one starts a session in its namespace."""
        form = await _form(request)
        target = _safe_next(form.get("next"))
        if not await sessions.csrf_ok(await sessions.read(request), form.get("csrf")):
            return await render(
                request, None, "login.html", 403, next=target, error="The form expired; try again."
            )
        key = form.get("key", "").strip()
        namespace = await keys.namespace_of(key) if is_well_formed(key) else None
        if namespace is None:
            return await render(
                request,
                None,
                "login.html",
                401,
                next=target,
                error="That key is not valid: malformed, unknown or revoked.",
            )
        response = RedirectResponse(target, status_code=303)
        await sessions.set_cookie(request, response, sessions.new(hash_key(key)))
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        """End the session (a form with the CSRF token, so no other site logs one out)."""
        form = await _form(request)
        if not await sessions.csrf_ok(await sessions.read(request), form.get("csrf")):
            return RedirectResponse("/", status_code=303)
        response = RedirectResponse("/login", status_code=303)
        Sessions.clear(response)
        return response

    return router


def _actions_for(run: RunDetail, *, live: bool) -> list[str]:
    """The actions that make sense for the run as it is."""
    if not live:
        return []
    if run.status == RunStatus.CLEANING_UP:  # only a second cancel: it ends the run now
        return ["cancel"]
    actions = []
    if run.status == RunStatus.PAUSED or run.pause_requested:
        actions.append("resume")
    else:
        actions.append("pause")
    if any(wait.kind == "sleep" for wait in run.waits):
        actions.append("wake")
    actions.append("cancel")
    return actions


def _next(request: Request) -> str:
    return _safe_next(request.query_params.get("next"))


def _safe_next(target: str | None) -> str:
    """A path on this server to go to after the login; `/` for anything else."""
    return target if target and _SAFE_NEXT.match(target) else "/"


async def _form(request: Request) -> dict[str, str]:
    """The fields of a urlencoded form (the last value of each)."""
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[-1] for name, values in fields.items()}
