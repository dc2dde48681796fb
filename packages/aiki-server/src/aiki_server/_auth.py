"""Who is calling: `ApiKeyAuth`, the outermost layer, puts the caller's namespace in the scope.

A request carries `Authorization: Bearer <key>`; the key's namespace goes into the
ASGI scope (`NAMESPACE_SCOPE_KEY`), where the hot path and the routes (through the
`caller_namespace` dependency) read it. Everything a request names is looked up in
that namespace only, so another namespace's run is a 404, not a 403.

- A missing key is a 401 once the database holds any key (or `require_api_key` is
  set); until then the server is open and every request is in `DEFAULT_NAMESPACE`.
  The `serve` command binds such an open server to loopback only.
- A key that is malformed, unknown or revoked is a 401, open server or not.
- Public without a key: `/health`, the OpenAPI document and its `/docs` page, and
  webhook deliveries, whose signed URL is their credential (the run's namespace
  comes from the webhook).

Answers are kept `KEY_CACHE_TTL` seconds, so a request with a known key costs a
SHA-256 and a dict lookup, and a revocation takes effect within that time.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from aiki_core import DEFAULT_NAMESPACE, AuthenticationError
from aiki_server._api_keys import any_key, hash_key, is_well_formed, namespace_of
from aiki_server._errors import error_response, response_for

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from aiki_server._storage._database import Database

KEY_CACHE_TTL = 2.0
"""Seconds an answer about a key is kept: a revoked key stops working within this."""

NAMESPACE_SCOPE_KEY = "aiki.namespace"
"""The ASGI scope entry holding the caller's namespace."""

_MAX_REFUSED = 10_000
"""Refused keys remembered at most: made-up keys are forgotten, live ones are not."""
_PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
_WEBHOOK_DELIVERY = re.compile(r"^/api/v1/webhooks/[^/]+$")
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+) *$")


class ApiKeys:
    """Answers which namespace a key opens, and whether a key is required, from a cache."""

    def __init__(self, db: Database, *, required: bool = False) -> None:
        self._db = db
        self._required = required
        """Sticky once true: keys are never deleted, so a database with one keeps it."""
        self._open_until = 0.0
        self._live: dict[str, tuple[str, float]] = {}
        """Key hash -> (the namespace it opens, valid until)."""
        self._refused: dict[str, float] = {}
        """Key hash of a key that opens nothing -> valid until."""

    async def required(self) -> bool:
        """Whether a request must carry a key: the database holds one, or settings say so."""
        if self._required:
            return True
        now = time.monotonic()
        if now >= self._open_until:
            self._required = await any_key(self._db)
            self._open_until = now + KEY_CACHE_TTL
        return self._required

    async def namespace_of(self, key: str) -> str | None:
        """The namespace `key` opens, or `None` for a malformed, unknown or revoked key."""
        if not is_well_formed(key):
            return None
        key_hash = hash_key(key)
        now = time.monotonic()
        live = self._live.get(key_hash)
        if live is not None and now < live[1]:
            return live[0]
        if now < self._refused.get(key_hash, 0.0):
            return None
        namespace = await namespace_of(self._db, key_hash)
        until = now + KEY_CACHE_TTL
        if namespace is None:
            self._live.pop(key_hash, None)
            if len(self._refused) >= _MAX_REFUSED:
                self._refused.clear()  # a flood of made-up keys must not grow it
            self._refused[key_hash] = until
        else:
            self._live[key_hash] = (namespace, until)  # as many as the database holds
            self._required = True
        return namespace

    def forget(self) -> None:
        """Drop every cached answer (an in-process harness that just changed the keys)."""
        self._live.clear()
        self._refused.clear()
        self._open_until = 0.0


class ApiKeyAuth:
    """Authenticates every non-public request and scopes it to its key's namespace."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with its namespace, or answer 401."""
        if scope["type"] == "websocket":  # no such routes: fail closed should one appear
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http" or _is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = _authorization(scope)
        try:
            if header is None:
                if await self.keys.required():
                    raise AuthenticationError(
                        "this server requires an API key: send `Authorization: Bearer <key>`"
                    )
                namespace: str | None = DEFAULT_NAMESPACE
            else:
                match = _BEARER.match(header)
                namespace = None if match is None else await self.keys.namespace_of(match[1])
                if namespace is None:
                    raise AuthenticationError(
                        "the API key is not valid: malformed, unknown or revoked"
                    )
        except AuthenticationError as exc:
            challenge = "Bearer" if header is None else 'Bearer error="invalid_token"'
            response = error_response(exc, headers={"www-authenticate": challenge})
            await response(scope, receive, send)
            return
        except Exception as exc:  # the key store failed (the database is down, say)
            await response_for(exc, scope)(scope, receive, send)
            return
        scope[NAMESPACE_SCOPE_KEY] = namespace
        await self.app(scope, receive, send)


def _is_public(path: str) -> bool:
    return path in _PUBLIC_PATHS or _WEBHOOK_DELIVERY.match(path) is not None


def _authorization(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            text: str = value.decode("latin-1")
            return text
    return None


_BEARER_SCHEME = HTTPBearer(
    scheme_name="ApiKey",
    bearerFormat="aiki_<id>_<secret>",
    description="An API key from `aiki-server keys create --namespace NAME`; it scopes"
    " every request to its namespace. A server that holds no key accepts requests"
    " without one, in the namespace `default`.",
    auto_error=False,
)


async def caller_namespace(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER_SCHEME)],
) -> str:
    """The namespace `ApiKeyAuth` scoped the request to (declares the scheme in the OpenAPI)."""
    namespace: str = request.scope[NAMESPACE_SCOPE_KEY]
    return namespace
