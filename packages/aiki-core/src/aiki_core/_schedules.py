"""Schedules: start a run of a workflow version by cron expression or at a fixed interval.

Each occurrence starts a run with a reference id derived from the schedule and the
occurrence's due time, so an occurrence is never started twice, even across a
server restart. The server validates the cron expression itself (with its cron
library); here it only has to be present.
"""

from __future__ import annotations

import zoneinfo
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Self

from pydantic import AfterValidator, AwareDatetime, Field, JsonValue, model_validator

from aiki_core._duration import Duration
from aiki_core._ids import DEFAULT_POOL, Namespace, PoolName, RunId, ScheduleId
from aiki_core._wire import ClientId, Fingerprint, Name, RequestModel, ResponseModel, VersionName

__all__ = ["CreateScheduleRequest", "OverlapPolicy", "Schedule", "SchedulePage"]

MIN_INTERVAL = timedelta(seconds=1)
"""The shortest `every` a schedule accepts."""


class OverlapPolicy(StrEnum):
    """What an occurrence does while the previous run of the schedule is still going."""

    SKIP = "skip"
    """Start nothing this time."""
    ALLOW = "allow"
    """Start another run beside it."""
    CANCEL_PREVIOUS = "cancel_previous"
    """Cancel the previous run, then start the new one."""


def _known_timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r}") from exc
    return name


Timezone = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_known_timezone)]


class CreateScheduleRequest(RequestModel):
    """Create a schedule; give exactly one of `cron` and `every`."""

    name: Name
    workflow: Name
    version: VersionName
    input: JsonValue = None
    id: ClientId | None = Field(
        default=None,
        description="The new schedule's id, minted by the client (a ULID) so the input can "
        "be sealed to it; the server mints one when it is left out.",
    )
    input_hash: Fingerprint | None = Field(
        default=None,
        description="The input's fingerprint, compared instead of the input when the name "
        "exists (a keyed HMAC when the client seals its input).",
    )
    cron: str | None = Field(default=None, min_length=1, max_length=200)
    every: Duration | None = None
    timezone: Timezone = "UTC"
    overlap: OverlapPolicy = OverlapPolicy.SKIP
    pool: Name = DEFAULT_POOL

    @model_validator(mode="after")
    def _one_cadence(self) -> Self:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron and every")
        if self.every is not None and self.every < MIN_INTERVAL:
            raise ValueError(f"every must be at least {MIN_INTERVAL.total_seconds():.0f} s")
        return self


class Schedule(ResponseModel):
    """A stored schedule and where it stands."""

    id: ScheduleId
    namespace: Namespace
    name: str
    workflow: str
    version: str
    input: JsonValue = None
    cron: str | None = None
    every: Duration | None = None
    timezone: str
    overlap: OverlapPolicy
    pool: PoolName
    paused: bool
    next_fire_at: AwareDatetime | None = None
    last_run_id: RunId | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime


class SchedulePage(ResponseModel):
    """One page of schedules; pass `next_cursor` back for the next."""

    schedules: list[Schedule]
    next_cursor: str | None = None
