"""Who is calling: `ApiKeyAuth` puts the caller's namespace in the scope of each request.

A request carries `Authorization: Bearer <key>`; the key's namespace goes into the
ASGI scope (`NAMESPACE_SCOPE_KEY`), where the hot path and the routes (through the
`caller_namespace` dependency) read it. Everything a request names is looked up in
that namespace only, so another namespace's run is a 404, not a 403.

- A missing key is a 401 once the database holds any key (or `require_api_key` is
  set); until then the server is open and every request is in `DEFAULT_NAMESPACE`.
  The `serve` command binds such an open server to loopback only.
- A key that is malformed, unknown or revoked is a 401, open server or not.
- Public without a key: `/health`, `/metrics`, the OpenAPI document and its `/docs` page, and
  webhook deliveries, whose signed URL is their credential (the run's namespace
  comes from the webhook). The dashboard's pages take no `Authorization` header:
  they check their own session cookie (see `_dashboard`).
- An open server answers only requests addressed to it by a loopback name
  (`localhost`, 127.0.0.0/8, `[::1]`, any port), by its public URL's host, or by a
  name of `allowed_hosts`: any other `Host` is a 403, on every path, public or not.
  A web page whose domain an attacker re-points at 127.0.0.1 (DNS rebinding) sends
  its own domain as `Host`, so it cannot drive a keyless server from a browser. A
  request without a `Host` (HTTP/1.0) is no browser's and is answered. Once keys are
  required, any `Host` is answered: the keys protect the server.

Answers are kept `KEY_CACHE_TTL` seconds, so a request with a known key costs a
SHA-256 and a dict lookup, and a revocation takes effect within that time.
"""

from __future__ import annotations

import ipaddress
import re
import time
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from aiki_core import AuthenticationError, PermissionDeniedError
from aiki_core.wire import DEFAULT_NAMESPACE
from aiki_server._api_keys import any_key, hash_key, is_well_formed, namespace_of
from aiki_server._errors import error_response, response_for

if TYPE_CHECKING:
    from starlette.responses import Response
    from starlette.types import ASGIApp, Receive, Scope, Send

    from aiki_server._storage._database import Database

KEY_CACHE_TTL = 2.0
"""Seconds an answer about a key is kept: a revoked key stops working within this."""

NAMESPACE_SCOPE_KEY = "aiki.namespace"
"""The ASGI scope entry holding the caller's namespace."""

_MAX_REFUSED = 10_000
"""Refused keys remembered at most: made-up keys are forgotten, live ones are not."""
_MAX_HOSTS = 1_000
"""`Host` headers whose answer is remembered at most."""
_MAX_HOST_LENGTH = 300
"""The longest `Host` header whose answer is remembered (a DNS name, a port and some)."""
_PUBLIC_PATHS = frozenset(
    {"/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect"}
)
_WEBHOOK_DELIVERY = re.compile(r"^/api/v1/webhooks/[^/]+$")
_DASHBOARD = re.compile(
    r"^/(?:|login|logout|workers|queues|schedules|(?:runs|schedules)/[^/]+(?:/[a-z]+)?"
    r"|static/[^?#]+)$"
)
"""The dashboard's pages, forms and files (they authenticate by their session cookie)."""
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
        return await self.namespace_of_hash(hash_key(key))

    async def namespace_of_hash(self, key_hash: str) -> str | None:
        """The namespace the key of this `hash_key` opens, or `None` (unknown or revoked)."""
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


def is_loopback(host: str) -> bool:
    """Whether a host name or address (IPv6 in brackets or not) names this machine only."""
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


class HostCheck:
    """Which `Host` headers an open server answers (see the module's docstring)."""

    def __init__(self, public_url: str | None, allowed_hosts: tuple[str, ...]) -> None:
        # IPv6 addresses without brackets on both sides: `urlsplit` drops them, a Host keeps them
        names = {name.lower().rstrip(".").strip("[]") for name in allowed_hosts}
        if public_url is not None and urlsplit(public_url).hostname:
            names.add(str(urlsplit(public_url).hostname).rstrip("."))
        self._any = "*" in names
        self._names = frozenset(names)
        self._answers: dict[str, bool] = {}
        """Each `Host` seen -> whether it is answered: parsing an address costs more than
        the rest of the check, and a client sends the same `Host` every time."""

    def allows(self, host: str | None) -> bool:
        """Whether a request with this `Host` header (`None`: without one) is answered."""
        if host is None or self._any:
            return True
        answer = self._answers.get(host)
        if answer is None:
            name = _host_name(host)
            answer = is_loopback(name) or name in self._names
            if len(host) <= _MAX_HOST_LENGTH:  # a huge made-up one is not kept
                if len(self._answers) >= _MAX_HOSTS:
                    self._answers.clear()  # a flood of made-up names must not grow it
                self._answers[host] = answer
        return answer


def _host_name(host: str) -> str:
    """The name in a `Host` header, without its port (or brackets): `[::1]:9850` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, colon, port = host.rpartition(":")
    return name.rstrip(".") if colon and port.isdigit() else host.rstrip(".")


class Admission:
    """Whether a request is answered, and in which namespace (see the module's docstring)."""

    def __init__(self, keys: ApiKeys, hosts: HostCheck) -> None:
        self.keys = keys
        self.hosts = hosts

    async def refusal(self, scope: Scope) -> Response | None:
        """The answer refusing the request of `scope`, or `None` once its namespace is set.

        The `Host` is checked first (403); then a non-public request's key (401).
        """
        host_refusal = await self._host_refusal(scope)
        if host_refusal is not None or _is_public(scope["path"]):
            return host_refusal
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
            return error_response(exc, headers={"www-authenticate": challenge})
        except Exception as exc:  # the key store failed (the database is down, say)
            return response_for(exc, scope)
        scope[NAMESPACE_SCOPE_KEY] = namespace
        return None

    async def _host_refusal(self, scope: Scope) -> Response | None:
        """The 403 for a request whose `Host` is not one to answer, else `None`."""
        host = _header(scope, b"host")
        if self.hosts.allows(host):
            return None
        try:
            if await self.keys.required():
                return None  # a key protects the server, whatever name reached it
        except Exception as exc:  # the key store failed (the database is down, say)
            return response_for(exc, scope)
        refused = PermissionDeniedError(
            f"this server holds no API key, so it answers only requests addressed to"
            f" localhost, a loopback address or its public URL; Host {host!r} is none of"
            " these (set the server's public URL, or create an API key, to be reached"
            " under another name)",
            details={"host": host},
        )
        return error_response(refused)


class ApiKeyAuth:
    """Authenticates every non-public request and scopes it to its key's namespace."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with its namespace, or answer 401 (or 403 for its `Host`)."""
        if scope["type"] == "websocket":  # the channel is served outside: fail closed
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = await self.admission.refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_public(path: str) -> bool:
    return (
        path in _PUBLIC_PATHS
        or _WEBHOOK_DELIVERY.match(path) is not None
        or _DASHBOARD.match(path) is not None
    )


def _authorization(scope: Scope) -> str | None:
    return _header(scope, b"authorization")


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
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
