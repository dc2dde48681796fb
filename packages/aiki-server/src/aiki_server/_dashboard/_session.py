"""The dashboard's session cookie and its CSRF tokens.

The cookie holds a random session id, the SHA-256 of the API key the session logged
in with (none on a server without keys) and an expiry, signed with HMAC-SHA256 under
a secret the database keeps (`server_secrets`, shared by every replica). It holds no
key: the hash is looked up on each request, so a revoked key ends its sessions
within `KEY_CACHE_TTL`. The cookie is HttpOnly and SameSite=Strict, so no other site
sends it, and no script reads it.

Every form that changes something carries a CSRF token, the HMAC of the session id:
a POST whose token is not its own session's is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from aiki_server._webhooks import stored_secret

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from aiki_server._clock import Clock
    from aiki_server._storage._database import Database

COOKIE = "aiki_session"
SESSION_TTL_MS = 12 * 3600 * 1000
"""A session ends 12 hours after its login (or first visit)."""
_SECRET_NAME = "dashboard_session"


@dataclass(frozen=True, slots=True)
class Session:
    """A verified cookie: its id, the key hash it logged in with, and its expiry."""

    sid: str
    key_hash: str | None
    expires_at: int


class Sessions:
    """Issues and verifies session cookies and CSRF tokens."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._secret: bytes | None = None
        self._lock = anyio.Lock()

    async def _key(self) -> bytes:
        if self._secret is None:
            async with self._lock:
                if self._secret is None:
                    self._secret = await stored_secret(self._db, self._clock(), _SECRET_NAME)
        return self._secret

    async def read(self, request: Request) -> Session | None:
        """The request's session, or `None` if it has none, a forged one or an expired one."""
        cookie = request.cookies.get(COOKIE)
        if cookie is None or "." not in cookie:
            return None
        body, _, signature = cookie.rpartition(".")
        expected = self._sign(await self._key(), body)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return None
        try:
            sid, key_hash, expires_at = json.loads(base64.urlsafe_b64decode(body + "=="))
        except (ValueError, TypeError):
            return None
        if not isinstance(expires_at, int) or expires_at <= self._clock():
            return None
        return Session(str(sid), None if key_hash is None else str(key_hash), expires_at)

    def new(self, key_hash: str | None) -> Session:
        """A new session (a new id, so a new CSRF token) for the key of `key_hash`."""
        return Session(secrets.token_urlsafe(16), key_hash, self._clock() + SESSION_TTL_MS)

    async def set_cookie(self, request: Request, response: Response, session: Session) -> None:
        """Send `session` as the response's cookie."""
        raw = json.dumps([session.sid, session.key_hash, session.expires_at])
        body = base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()
        response.set_cookie(
            COOKIE,
            f"{body}.{self._sign(await self._key(), body)}",
            max_age=max((session.expires_at - self._clock()) // 1000, 0),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    async def csrf_token(self, session: Session) -> str:
        """The token the session's forms carry."""
        return self._sign(await self._key(), f"csrf:{session.sid}")

    async def csrf_ok(self, session: Session | None, token: str | None) -> bool:
        """Whether `token` is the session's own CSRF token."""
        if session is None or not token:
            return False
        return hmac.compare_digest((await self.csrf_token(session)).encode(), token.encode())

    @staticmethod
    def clear(response: Response) -> None:
        """End the session in the browser."""
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")

    @staticmethod
    def _sign(key: bytes, text: str) -> str:
        digest = hmac.new(key, text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
