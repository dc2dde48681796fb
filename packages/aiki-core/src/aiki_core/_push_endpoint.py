"""`SignedPushApp`: what every endpoint the server pushes to does before anything runs.

Written once for the workflow endpoint (`aiki_worker.asgi_app`), the task service
(`aiki_task.asgi_app`) and any other: a subclass implements `handle` alone.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from aiki_core._exceptions import (
    AikiError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PayloadValidationError,
    PushSignatureError,
)
from aiki_core._push_signing import PUSH_ID_HEADER, PushVerifier

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence

    from aiki_core._logging import Logger
    from aiki_core._push_signing import PushSecret

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]

__all__ = ["PushRefused", "SignedPushApp"]

ModelT = TypeVar("ModelT", bound=BaseModel)


class PushRefused(Exception):
    """A push answered with `error` (its status, or `status`), and nothing more run."""

    def __init__(
        self,
        error: AikiError,
        *,
        status: int | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.status = error.status_code if status is None else status
        self.headers = list(headers)


class SignedPushApp(ABC):
    """The base of a plain ASGI app that takes Aiki's signed pushes.

    Only `POST` on `path` (below the mount point, `root_path`) is served: 404
    elsewhere, 405 with `Allow: POST` for another method. A body over
    `max_body_bytes` is refused with 413, unread when its `content-length` says so; a
    caller gone before its body ends gets 400. A request no secret in `secrets`
    signed, signed more than `signature_tolerance` away from this clock, or delivered
    here before is refused with 401 before `handle` sees it. What `handle` returns is
    the 200 answer; a `PushRefused` it raises is the error answer, any other
    exception a 500 (the app serves on). Refusals and crashes are logged to
    `request_log()`, with the delivery id; lifespan events are acknowledged and
    websockets refused.
    """

    def __init__(
        self,
        secrets: Iterable[str | PushSecret],
        *,
        path: str = "/",
        max_body_bytes: int,
        signature_tolerance: timedelta = timedelta(minutes=5),
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        self.path = "/" + path.strip("/")
        self.max_body_bytes = max_body_bytes
        self.verifier = PushVerifier(secrets, tolerance=signature_tolerance)

    @abstractmethod
    async def handle(self, body: bytes, delivery_id: str, log: Logger) -> BaseModel:
        """Act on one verified push; its answer, or raise `PushRefused`."""

    @abstractmethod
    def request_log(self) -> Logger:
        """The logger of one request, given to `handle`."""

    @staticmethod
    def parse(model: type[ModelT], body: bytes, invalid: str) -> ModelT:
        """`body` as a `model`; else a 422 refusal, `invalid` with the validation errors."""
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise PushRefused(PayloadValidationError.from_pydantic(invalid, exc)) from None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection: pushes over HTTP, lifespan events acknowledged."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] == "websocket":  # refused at once
            await send({"type": "websocket.close", "code": 1003})
            return
        if scope["type"] != "http":
            raise ValueError(f"an Aiki push endpoint speaks HTTP, not {scope['type']}")
        log = self.request_log()
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", ())
        }
        try:
            answer = await self._serve(scope, headers, receive, log)
        except PushRefused as refused:
            log.warn(
                "push refused",
                {
                    "status": refused.status,
                    "error": refused.error.message,
                    # unverified: no longer than a delivery id may be
                    "delivery_id": headers.get(PUSH_ID_HEADER, "")[:64],
                },
            )
            await _respond(send, refused.status, _json(refused.error.to_wire()), refused.headers)
            return
        except Exception as exc:  # a bug of the app: the request ends, the app serves on
            log.error("the push crashed the endpoint", {"error": repr(exc)})
            await _respond(send, 500, _json(AikiError("the endpoint failed").to_wire()))
            return
        await _respond(send, 200, answer.model_dump_json().encode())

    async def _serve(
        self, scope: Scope, headers: dict[str, str], receive: Receive, log: Logger
    ) -> BaseModel:
        path = _route(scope)
        if path != self.path:
            raise PushRefused(NotFoundError("path", path))
        method = scope.get("method")
        if method != "POST":
            error = InvalidRequestError(f"{method} is not served here; POST a push")
            raise PushRefused(error, status=405, headers=[(b"allow", b"POST")])
        body = await self._body(headers, receive)
        try:
            delivery_id = self.verifier.verify(headers, body)
        except PushSignatureError as exc:  # nothing is parsed, nothing runs
            raise PushRefused(exc) from None
        return await self.handle(body, delivery_id, log)

    async def _body(self, headers: dict[str, str], receive: Receive) -> bytes:
        declared = headers.get("content-length", "")
        # ASCII digits alone: "²" (a latin-1 header byte) is a digit to isdigit, not to int
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PushRefused(PayloadTooLargeError(int(declared), self.max_body_bytes))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise PushRefused(InvalidRequestError("the request ended before its body"))
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PushRefused(PayloadTooLargeError(size, self.max_body_bytes))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _route(scope: Scope) -> str:
    """The request's path below the app's mount point (Starlette keeps the full path)."""
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return "/" + path.strip("/")


def _json(body: object) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


async def _respond(
    send: Send, status: int, content: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Served alone (not mounted), the app has nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
