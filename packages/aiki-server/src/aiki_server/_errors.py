"""Every error leaves the server as `{"error": {"code", "message", "details"}}`.

`AikiError`s keep their own status and code; request validation becomes a 400
(unparsable JSON) or a 422 (wrong shape) listing each problem with its location;
a value no column can hold (an integer past 64 bits, a NUL or an unpaired surrogate
in a string) is a 400, its transaction rolled back; unknown routes keep their 404,
and a method a path does not take its 405 with an `Allow` header naming every method
the path takes (Starlette names only those of the first route that matched);
a database outage (`_storage._outage`) is a 503 with `Retry-After`; anything else is a
500 that names no internals.

Every 5xx answer is logged at error level with its cause (type, message, traceback)
and the request's method and path, wherever it is produced: the routes, the hot path,
the API-key check.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

import asyncpg
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from aiki_core import (
    AikiError,
    InvalidRequestError,
    NotFoundError,
    PayloadValidationError,
    ServerError,
    ServerUnavailableError,
    TooManyRequestsError,
)
from aiki_server._limits import BodyTooLarge
from aiki_server._logs import component
from aiki_server._storage._outage import OUTAGE_TYPES, is_outage, unavailable

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fastapi import FastAPI, Request

_log = component("http")


def error_response(
    error: AikiError, status_code: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON response of an error; one that says when to try again has `Retry-After`."""
    if (
        isinstance(error, ServerUnavailableError | TooManyRequestsError)
        and error.retry_after is not None
    ):
        headers = {**(headers or {}), "Retry-After": str(max(round(error.retry_after), 1))}
    return JSONResponse(
        error.to_wire(), status_code=status_code or error.status_code, headers=headers
    )


def log_failure(
    message: str, exc: BaseException, metadata: Mapping[str, object] | None = None
) -> None:
    """Log `exc` at error level with its type, message and traceback."""
    _log.error(
        message,
        {
            **(metadata or {}),
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(exc)),
        },
    )


def _problems(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {
            "loc": [str(part) for part in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = _problems(exc)
    path_ids = [p["loc"][1] for p in problems if p["loc"][:1] == ["path"] and len(p["loc"]) > 1]
    if path_ids:  # an id no row can have names nothing: a 404, as an unknown id is
        name = path_ids[0]
        resource = name.removesuffix("_id")
        return error_response(NotFoundError(resource, str(request.path_params.get(name, ""))))
    if any(p["type"] == "json_invalid" for p in problems):
        return error_response(InvalidRequestError("the request body is not valid JSON"))
    summary = "; ".join(f"{'.'.join(p['loc'])}: {p['msg']}" for p in problems[:5])
    return error_response(PayloadValidationError(f"invalid request: {summary}", errors=problems))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, BodyTooLarge):
        return error_response(exc.error)
    if exc.status_code == 404:
        path = request.url.path
        return error_response(NotFoundError("route", path, message=f"no route {path}"))
    # 405 and friends keep their status; the body still has the wire shape
    wire = InvalidRequestError(str(exc.detail)).to_wire()
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return JSONResponse(wire, status_code=exc.status_code, headers=headers)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    # asked of every route as the router asks, so the routes of included routers count too
    routes = request.app.router.routes

    def takes(method: str) -> bool:
        scope = {**request.scope, "method": method}
        return any(route.matches(scope)[0] is Match.FULL for route in routes)

    return [method for method in _METHODS if takes(method)]


# a request value the database (or a timedelta) cannot represent: the request's fault
_UNSTORABLE: tuple[type[Exception], ...] = (OverflowError, UnicodeEncodeError, asyncpg.DataError)


def response_for(exc: Exception, scope: Mapping[str, Any]) -> JSONResponse:
    """The wire response of an error raised while the request of `scope` was handled.

    A 5xx is logged with its cause.
    """
    response = _response_for(exc)
    if response.status_code >= 500:
        log_failure(
            "request failed",
            exc,
            {
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": response.status_code,
            },
        )
    return response


def _response_for(exc: Exception) -> JSONResponse:
    if isinstance(exc, AikiError):
        return error_response(exc)
    if isinstance(exc, BodyTooLarge):
        return error_response(exc.error)
    if isinstance(exc, _UNSTORABLE):
        return error_response(
            InvalidRequestError(
                "the request holds a value the server cannot store: a number out of range,"
                " or a string with a NUL character or an unpaired surrogate"
            )
        )
    if is_outage(exc):
        return error_response(unavailable(exc))
    return error_response(ServerError("the server failed to handle the request"))


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    return response_for(exc, request.scope)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to the wire error shape."""
    app.add_exception_handler(AikiError, _on_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    # answered here rather than by the outermost layer, which would raise them on to the
    # ASGI server after answering (a second log line per outage error)
    for handled in (*_UNSTORABLE, *OUTAGE_TYPES):
        app.add_exception_handler(handled, _on_error)
    app.add_exception_handler(Exception, _on_error)
