"""`client.rate_limits`: define, read, list, change and delete rate limits, and acquire units."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from aiki_client._http import api_path
from aiki_core import PayloadValidationError
from aiki_core.wire import (
    AcquireRateLimitRequest,
    AcquireRateLimitResponse,
    RateLimitInfo,
    RateLimitPage,
    RateLimitUse,
    SetRateLimitRequest,
)

if TYPE_CHECKING:
    from datetime import timedelta

    from aiki_client._client import Client


def _path(name: str, *rest: str) -> str:
    """The route of limit `name`; `PayloadValidationError` for a name no limit can have."""
    try:
        RateLimitUse(name=name)  # the names a task's or a start's use may give
    except ValidationError as exc:
        what = f"invalid rate limit name {name!r}"
        raise PayloadValidationError.from_pydantic(what, exc) from None
    return api_path("rate-limits", name, *rest)


class RateLimits:
    """The rate limits of the client's API key's namespace (`client.rate_limits`).

    Tasks consume a limit with `@task(..., rate_limit=RateLimit(name, ...))`; the
    server hands out the units, so a limit holds across every worker and replica.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    async def set(self, name: str, *, limit: int, per: timedelta) -> RateLimitInfo:
        """Allow at most `limit` units of `name` in any window of `per`, for each key.

        Defines the limit, or changes it: a change applies from each key's next grant on.
        `limit` and `per` must be positive (`PayloadValidationError` otherwise).
        """
        try:
            request = SetRateLimitRequest(limit=limit, per=per)
        except ValidationError as exc:
            what = f"invalid rate limit {name!r}"
            raise PayloadValidationError.from_pydantic(what, exc) from None
        return await self._client._call("PUT", _path(name), RateLimitInfo, request)

    async def get(self, name: str) -> RateLimitInfo:
        """One limit; `RateLimitNotFoundError` if it is not defined."""
        return await self._client._call("GET", _path(name), RateLimitInfo)

    async def list(self) -> list[RateLimitInfo]:
        """Every limit of the namespace, by name."""
        page = await self._client._call("GET", "/rate-limits", RateLimitPage)
        return page.rate_limits

    async def delete(self, name: str) -> RateLimitInfo:
        """Delete the limit and the budgets of its keys; the limit as it was."""
        return await self._client._call("DELETE", _path(name), RateLimitInfo)

    async def acquire(
        self, name: str, *, units: int = 1, key: str = "", request_id: str | None = None
    ) -> AcquireRateLimitResponse:
        """Take `units` from the budget of `key` now, or learn when they can be had.

        Nothing is taken unless the answer says `granted`. A worker calls it before
        each attempt of a task that declares a `RateLimit`. Give the same `request_id`
        (a ULID) to each retry of one request whose answer was lost: if the key's last
        grant was that request's, it is given back rather than taken again.
        """
        try:
            request = AcquireRateLimitRequest(units=units, key=key, request_id=request_id)
        except ValidationError as exc:
            what = f"invalid acquisition of rate limit {name!r}"
            raise PayloadValidationError.from_pydantic(what, exc) from None
        return await self._client._call(
            "POST",
            _path(name, "acquire"),
            AcquireRateLimitResponse,
            request,
            repeatable=request_id is not None,  # its grant comes back, not taken again
        )
