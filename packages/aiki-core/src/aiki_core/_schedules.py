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

from pydantic import (
    AfterValidator,
    AwareDatetime,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    model_validator,
)

from aiki_core._duration import Duration, DurationRange
from aiki_core._error_info import ErrorInfo
from aiki_core._ids import DEFAULT_POOL, Namespace, PoolName, RunId, ScheduleId
from aiki_core._wire import (
    NO_NUL,
    ClientId,
    Count,
    Fingerprint,
    Name,
    RequestModel,
    ResponseModel,
    VersionName,
    given,
)

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


_TIMEZONES = frozenset(zoneinfo.available_timezones())


def _known_timezone(name: str) -> str:
    if name not in _TIMEZONES:
        raise ValueError(f"unknown timezone {name!r}")
    return name


Timezone = Annotated[
    str,
    AfterValidator(_known_timezone),
    WithJsonSchema({"type": "string", "enum": sorted(_TIMEZONES)}),
]
"""An IANA timezone this machine's tz database knows, such as `Europe/Paris`."""


Cron = Annotated[
    str,
    Field(min_length=1, max_length=200, pattern=NO_NUL, json_schema_extra={"format": "cron"}),
]
"""A cron expression; `format: cron` in the JSON Schema (the server parses it with cronsim)."""


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
    cron: Cron | None = Field(
        default=None,
        description="Five fields: minute, hour, day of month, month, day of week (numbers, "
        "`*`, ranges, steps, lists, `JAN`-`DEC`, `SUN`-`SAT`, `L`, `W`, `#`); the server "
        "checks it, and one that never fires is refused too.",
    )
    every: Annotated[Duration, DurationRange(at_least=MIN_INTERVAL)] | None = None
    timezone: Timezone = "UTC"
    overlap: OverlapPolicy = OverlapPolicy.SKIP
    pool: Name = DEFAULT_POOL
    timeout: Duration | None = Field(
        default=None,
        description="Each run's deadline, counted from when the occurrence starts it, as "
        "a run started by hand with this `timeout`; none when left out.",
    )

    model_config = ConfigDict(json_schema_extra={"oneOf": [given("cron"), given("every")]})

    @model_validator(mode="after")
    def _one_cadence(self) -> Self:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron and every")
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
    timeout: Duration | None = Field(
        default=None, description="The deadline of each run it starts, from that run's start."
    )
    paused: bool
    next_fire_at: AwareDatetime | None = None
    last_run_id: RunId | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    timer_failures: Count = Field(
        default=0,
        description="Times in a row the server failed to fire the schedule; from 5 on it is"
        " set aside (not fired) until it is paused and resumed.",
    )
    timer_error: ErrorInfo | None = Field(
        default=None, description="Why the server last failed to fire the schedule."
    )


class SchedulePage(ResponseModel):
    """One page of schedules; pass `next_cursor` back for the next."""

    schedules: list[Schedule]
    next_cursor: str | None = None
