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
from typing import Annotated, Any, Self

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
    Boolean,
    ClientId,
    Count,
    Fingerprint,
    Name,
    RequestModel,
    ResponseModel,
    Timestamp,
    VersionName,
    given,
)

__all__ = [
    "MAX_BACKFILL",
    "BackfillRequest",
    "BackfillResponse",
    "CatchUpPolicy",
    "CreateScheduleRequest",
    "OverlapPolicy",
    "Schedule",
    "SchedulePage",
    "UpdateScheduleRequest",
]

MIN_INTERVAL = timedelta(seconds=1)
"""The shortest `every` a schedule accepts."""
MAX_BACKFILL = 1000
"""The most occurrences one backfill starts (a longer span is refused: split it)."""
DEFAULT_CATCH_UP_WINDOW = timedelta(days=1)
"""How far back `CatchUpPolicy.ALL` looks when the schedule does not say."""


class OverlapPolicy(StrEnum):
    """What an occurrence does while the previous run of the schedule is still going."""

    SKIP = "skip"
    """Start nothing this time."""
    ALLOW = "allow"
    """Start another run beside it."""
    CANCEL_PREVIOUS = "cancel_previous"
    """Cancel the previous run, then start the new one."""


class CatchUpPolicy(StrEnum):
    """Which missed occurrences a schedule starts once the server fires it again.

    An occurrence is missed when it fired more than a minute late (the server was
    down, say) or while a long outage kept it from firing at all.
    """

    LATEST = "latest"
    """Start one run, for the most recent missed occurrence."""
    ALL = "all"
    """Start a run for every missed occurrence within `catch_up_window`, in order."""
    NONE = "none"
    """Start nothing for missed occurrences; go on with the next one."""


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


CatchUpWindow = Annotated[Duration, DurationRange(at_least=MIN_INTERVAL)]
"""How far back a schedule starts missed occurrences."""


def _five_fields(cron: str) -> str:
    # the server's cron library reads a sixth field as leading seconds: `* * * * * *`
    # would fire every second, and a minute read as a second another cadence
    if len(cron.split()) != 5:
        raise ValueError(
            "a cron expression has five fields: minute, hour, day of month, month, day of week"
        )
    return cron


Cron = Annotated[
    str,
    Field(min_length=1, max_length=200, pattern=NO_NUL, json_schema_extra={"format": "cron"}),
    AfterValidator(_five_fields),
]
"""A cron expression of five fields; `format: cron` in the JSON Schema (the server parses it
with cronsim)."""


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
    catch_up: CatchUpPolicy = CatchUpPolicy.LATEST
    catch_up_window: CatchUpWindow | None = Field(
        default=None,
        description="How far back `catch_up: all` starts missed occurrences (a day when left out).",
    )

    model_config = ConfigDict(json_schema_extra={"oneOf": [given("cron"), given("every")]})

    @model_validator(mode="after")
    def _one_cadence(self) -> Self:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron and every")
        return self


class UpdateScheduleRequest(RequestModel):
    """Change a schedule in place; a field left out keeps its value.

    The schedule keeps its id, name, workflow and the runs it started. Giving `cron`
    or `every` replaces the cadence (the other is cleared; give at most one), and the
    schedule goes on from the first occurrence after now. `paused` pauses or resumes
    it as `pause` and `resume` do. `timeout` and `catch_up_window` given as `null`
    clear them.
    """

    input: JsonValue = None
    input_hash: Fingerprint | None = Field(
        default=None, description="The new input's fingerprint (see `CreateScheduleRequest`)."
    )
    cron: Cron | None = None
    every: Annotated[Duration, DurationRange(at_least=MIN_INTERVAL)] | None = None
    timezone: Timezone | None = None
    overlap: OverlapPolicy | None = None
    timeout: Duration | None = None
    paused: Boolean | None = None
    catch_up: CatchUpPolicy | None = None
    catch_up_window: CatchUpWindow | None = None

    model_config = ConfigDict(json_schema_extra={"not": given("cron", "every")})

    @model_validator(mode="after")
    def _one_cadence(self) -> Self:
        if self.cron is not None and self.every is not None:
            raise ValueError("give at most one of cron and every")
        return self

    def model_dump_json(self, **options: Any) -> str:
        """The JSON of the fields given only: one left out keeps its value on the server."""
        return super().model_dump_json(**{"exclude_unset": True, **options})


class BackfillRequest(RequestModel):
    """Start the runs of the schedule's occurrences in [`start`, `end`).

    Each starts with the occurrence's reference id, so a backfill given twice (or
    overlapping what the schedule fired) starts nothing twice. The overlap policy
    does not apply: every occurrence of the span gets its run. An `end` not after
    `start` is an empty span.
    """

    start: Timestamp
    end: Timestamp


class BackfillResponse(ResponseModel):
    """The runs of a backfill's occurrences, oldest first."""

    run_ids: list[RunId]
    started: Count = Field(description="How many of them this backfill started.")


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
    catch_up: CatchUpPolicy = CatchUpPolicy.LATEST
    catch_up_window: Duration | None = Field(
        default=None, description="How far back `catch_up: all` looks (a day when `null`)."
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
