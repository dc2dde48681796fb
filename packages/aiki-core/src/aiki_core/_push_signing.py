"""Signed push deliveries: the server signs what it pushes, an endpoint checks it.

A push is an HTTP `POST` whose body is JSON. The server adds three headers:

- `aiki-push-id`: the delivery's id, new for every request (a retry gets a new one);
- `aiki-push-timestamp`: when it was signed, whole seconds since the epoch;
- `aiki-push-signature`: `<key id>=<hex>` for each secret the endpoint has now,
  comma-separated (two while a rotated secret is still honoured).

Each signature is HMAC-SHA256, keyed by the secret, over
`v1:<id>:<timestamp>:` followed by the body's bytes. An endpoint (`PushVerifier`)
accepts a request when one signature of a secret it knows matches, the timestamp is
within its tolerance of its own clock, and it has not seen the delivery id within
that window. Secrets carry their key id: `aiki_push_<key id>_<key>`, so an endpoint
is configured with the secret strings alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from ulid import ULID

from aiki_core._exceptions import PushSignatureError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

__all__ = [
    "PUSH_ID_HEADER",
    "PUSH_SIGNATURE_HEADER",
    "PUSH_TIMESTAMP_HEADER",
    "PushSecret",
    "PushVerifier",
    "sign_push",
]

PUSH_ID_HEADER = "aiki-push-id"
PUSH_TIMESTAMP_HEADER = "aiki-push-timestamp"
PUSH_SIGNATURE_HEADER = "aiki-push-signature"

_SECRET = re.compile(r"^aiki_push_([0-9a-z]{8})_([A-Za-z0-9_-]{43})$")
_SIGNATURE = re.compile(r"^([0-9a-z]{8})=([0-9a-f]{64})$")
_MAX_SIGNATURES = 4
"""A header with more signatures than this is refused unread."""


@dataclass(frozen=True, slots=True)
class PushSecret:
    """One signing secret of an endpoint: its key id and its 32 random bytes."""

    key_id: str
    key: bytes

    @classmethod
    def generate(cls) -> PushSecret:
        """A fresh secret with a fresh key id."""
        return cls(secrets.token_hex(4), secrets.token_bytes(32))

    @classmethod
    def parse(cls, text: str) -> PushSecret:
        """Read a secret from its string form; `ValueError` when it is not one."""
        match = _SECRET.match(text.strip())
        if match is None:
            raise ValueError("not an Aiki push secret (aiki_push_<key id>_<key>)")
        return cls(match[1], base64.urlsafe_b64decode(match[2] + "="))

    def __str__(self) -> str:
        key = base64.urlsafe_b64encode(self.key).decode().rstrip("=")
        return f"aiki_push_{self.key_id}_{key}"

    def __repr__(self) -> str:
        return f"PushSecret(key_id={self.key_id!r}, key=<hidden>)"

    def sign(self, delivery_id: str, timestamp: int, body: bytes) -> str:
        """The hex signature of one delivery."""
        message = f"v1:{delivery_id}:{timestamp}:".encode() + body
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()


def sign_push(
    body: bytes, secrets_: Iterable[PushSecret], *, now: float | None = None
) -> dict[str, str]:
    """The headers of one delivery of `body`, signed with each of `secrets_`."""
    delivery_id = str(ULID())
    timestamp = int(time.time() if now is None else now)
    signatures = ",".join(f"{s.key_id}={s.sign(delivery_id, timestamp, body)}" for s in secrets_)
    return {
        PUSH_ID_HEADER: delivery_id,
        PUSH_TIMESTAMP_HEADER: str(timestamp),
        PUSH_SIGNATURE_HEADER: signatures,
    }


class PushVerifier:
    """Checks the signature, age and uniqueness of pushed requests.

    `secrets` are the endpoint's secret strings (the one the server showed, and the
    new one during a rotation). A request is refused (`PushSignatureError`) when no
    signature of a known secret matches, when its timestamp is more than `tolerance`
    away from this process's clock, or when its delivery id was seen here before.
    Delivery ids are remembered for `tolerance`, at most `remember` of them: an
    endpoint with several instances cannot see each other's ids, so a replay to
    another instance within the window is stopped by what it delivers (a pushed run
    carries the revision of its claim, which a replayed copy no longer holds; a task
    attempt carries its idempotency key).
    """

    def __init__(
        self,
        secrets: Iterable[str | PushSecret],
        *,
        tolerance: timedelta = timedelta(minutes=5),
        remember: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parsed = [s if isinstance(s, PushSecret) else PushSecret.parse(s) for s in secrets]
        if not parsed:
            raise ValueError("a push verifier needs at least one secret")
        self._secrets = {s.key_id: s for s in parsed}
        self._tolerance = tolerance.total_seconds()
        self._remember = remember
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        """Delivery id -> when it may be forgotten, oldest first."""

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        """Check one request (`headers` by lower-case name); its delivery id, or raise."""
        delivery_id = headers.get(PUSH_ID_HEADER, "")
        stamp = headers.get(PUSH_TIMESTAMP_HEADER, "")
        signatures = headers.get(PUSH_SIGNATURE_HEADER, "")
        # ASCII digits only: headers read as latin-1 give "²", which isdigit takes, not int
        digits = stamp.isascii() and stamp.isdigit()
        if not delivery_id or len(delivery_id) > 64 or not digits or len(stamp) > 12:
            raise PushSignatureError("the push headers are missing or malformed")
        now = self._clock()
        if abs(now - int(stamp)) > self._tolerance:
            raise PushSignatureError("the push is too old, or this clock is off")
        if not self._matches(delivery_id, int(stamp), signatures, body):
            raise PushSignatureError("no signature of a known secret matches the push")
        self._forget(now)
        if delivery_id in self._seen:
            raise PushSignatureError("this push was delivered before (a replay)")
        self._seen[delivery_id] = now + self._tolerance
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return delivery_id

    def _matches(self, delivery_id: str, timestamp: int, header: str, body: bytes) -> bool:
        parts = header.split(",")
        if len(parts) > _MAX_SIGNATURES:
            return False
        for part in parts:
            match = _SIGNATURE.match(part.strip())
            secret = None if match is None else self._secrets.get(match[1])
            if match is not None and secret is not None:
                expected = secret.sign(delivery_id, timestamp, body)
                if hmac.compare_digest(expected, match[2]):
                    return True
        return False

    def _forget(self, now: float) -> None:
        while self._seen:
            oldest, until = next(iter(self._seen.items()))
            if until > now:
                return
            del self._seen[oldest]
