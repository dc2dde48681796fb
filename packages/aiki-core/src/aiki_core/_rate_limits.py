"""Rate limits: named budgets of units the server hands out, per key.

A limit (`limit` units per `per`, defined through the client, the CLI or the API) is
consumed by task attempts that declare a `RateLimit`, and optionally by run starts.
The server decides every grant in one transaction on the limit's bucket for the key,
so the limit holds across any number of workers and server replicas: no window of
length `per` sees more than `limit` units granted for one key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Generic, TypeVar

from pydantic import AwareDatetime, Field, StringConstraints, ValidationError

from aiki_core._duration import Duration, DurationRange
from aiki_core._exceptions import PayloadValidationError, RateLimitKeyError
from aiki_core._ids import Namespace
from aiki_core._wire import NO_NUL, ClientId, Ordinal, RequestModel, ResponseModel

__all__ = [
    "MAX_RATE_LIMIT_KEY_LENGTH",
    "AcquireRateLimitRequest",
    "AcquireRateLimitResponse",
    "RateLimit",
    "RateLimitInfo",
    "RateLimitPage",
    "RateLimitUse",
    "SetRateLimitRequest",
]

if TYPE_CHECKING:
    from collections.abc import Callable

InT = TypeVar("InT")

MAX_RATE_LIMIT_KEY_LENGTH = 200
"""The longest key a rate limit's budget is kept under."""

RateLimitName = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
]
"""A rate limit's name: a name without `/`, which would split its routes' path."""

RateLimitKey = Annotated[
    str, StringConstraints(max_length=MAX_RATE_LIMIT_KEY_LENGTH, pattern=NO_NUL)
]
"""Whose budget units come from (a user, a tenant); `""` is the limit's one shared budget."""


class SetRateLimitRequest(RequestModel):
    """Define a rate limit, or change it: at most `limit` units in any window of `per`."""

    limit: Ordinal
    per: Annotated[Duration, DurationRange(at_least=timedelta(milliseconds=1))]


class RateLimitInfo(ResponseModel):
    """A defined rate limit."""

    namespace: Namespace
    name: str
    limit: int
    per: Duration
    updated_at: AwareDatetime


class RateLimitPage(ResponseModel):
    """The rate limits of a namespace, by name."""

    rate_limits: list[RateLimitInfo]


class AcquireRateLimitRequest(RequestModel):
    """Take `units` from the budget of `key` (none unless all of them can be had now)."""

    units: Ordinal = 1
    key: RateLimitKey = ""
    request_id: ClientId | None = Field(
        default=None,
        description="A ULID the asker mints for this request and sends again with each retry"
        " of it: asked again after the key's last grant was its own (its answer lost), the"
        " request gets that grant back instead of taking units twice.",
    )


class AcquireRateLimitResponse(ResponseModel):
    """Whether the units were granted; if not, when to ask again (nothing was taken)."""

    granted: bool
    granted_at: AwareDatetime | None = Field(
        default=None, description="The server's time of the grant, when granted."
    )
    retry_at: AwareDatetime | None = Field(
        default=None, description="When the units can be had, on the server's clock."
    )
    retry_after: Duration | None = Field(
        default=None, description="How long from now that is (not granted only)."
    )


class RateLimitUse(RequestModel):
    """The units one task attempt (or one run start) takes from a rate limit."""

    name: RateLimitName
    units: Ordinal = 1
    key: RateLimitKey = ""


@dataclass(frozen=True, slots=True)
class RateLimit(Generic[InT]):
    """What a task attempt takes from the server's rate limit `name` before it runs.

        @task("summarise", rate_limit=RateLimit("openai", units=1, key=lambda d: d.user))

    `key` maps the task's input to whose budget the units come from (a user, a
    tenant): each key has the whole limit to itself. Without it, every attempt shares
    one budget. The limit itself (`limit` units per `per`) is defined apart, with the
    client's `rate_limits.set`, so it can change without a deploy.
    """

    name: str
    units: int = 1
    key: Callable[[InT], str] | None = None

    def __post_init__(self) -> None:
        # the same checks the wire makes, raised where the task is declared
        try:
            RateLimitUse(name=self.name, units=self.units)
        except ValidationError as exc:
            raise PayloadValidationError.from_pydantic("invalid RateLimit", exc) from None

    def use(self, payload: InT, owner: str) -> RateLimitUse:
        """The units `owner` (a task, a workflow version) takes for `payload`.

        Raises `RateLimitKeyError` if `key` fails.
        """
        key = ""
        if self.key is not None:
            try:
                key = self.key(payload)
            except Exception as exc:  # the user's function: any failure is its own
                raise RateLimitKeyError(self.name, owner, f"{type(exc).__name__}: {exc}") from exc
            if not isinstance(key, str) or len(key) > MAX_RATE_LIMIT_KEY_LENGTH or "\0" in key:
                shown = f"a string of {len(key)} characters" if isinstance(key, str) else repr(key)
                raise RateLimitKeyError(
                    self.name,
                    owner,
                    f"it returned {shown}, not a string of at most"
                    f" {MAX_RATE_LIMIT_KEY_LENGTH} characters without NUL",
                )
        try:
            return RateLimitUse(name=self.name, units=self.units, key=key)
        except ValidationError as exc:  # name and units passed at declaration: the key's
            problem = exc.errors()[0]["msg"]
            raise RateLimitKeyError(
                self.name, owner, f"it returned {key!r}, no key a request can carry: {problem}"
            ) from None
