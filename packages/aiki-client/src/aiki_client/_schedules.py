"""`client.schedules`: create, list, read, update, pause, resume, backfill and delete schedules."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from pydantic import ValidationError
from ulid import ULID

from aiki_client._http import api_path
from aiki_client._sealing import open_schedule, seal_input
from aiki_core import CatchUpPolicy, CodecContext, OverlapPolicy, PayloadValidationError
from aiki_core.wire import (
    DEFAULT_POOL,
    BackfillRequest,
    BackfillResponse,
    CreateScheduleRequest,
    Schedule,
    ScheduleId,
    SchedulePage,
    UpdateScheduleRequest,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from datetime import datetime, timedelta

    from pydantic import JsonValue

    from aiki_client._client import Client
    from aiki_core.sdk import SchedulableVersion

InT = TypeVar("InT")

Overlap = OverlapPolicy | Literal["skip", "allow", "cancel_previous"]
CatchUp = CatchUpPolicy | Literal["latest", "all", "none"]


class _Keep(Enum):
    KEEP = "keep"


KEEP = _Keep.KEEP
"""An `update` argument left as it is on the server."""


def new_schedule_id() -> ScheduleId:
    """A fresh schedule id (a ULID), minted here so the input is sealed to it before it exists."""
    return ScheduleId(str(ULID()))


class Schedules:
    """The schedules of the client's API key's namespace (`client.schedules`)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def create(
        self,
        name: str,
        version: SchedulableVersion[InT],
        payload: InT,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        timezone: str = "UTC",
        overlap: Overlap = OverlapPolicy.SKIP,
        pool: str = DEFAULT_POOL,
        timeout: timedelta | None = None,
        catch_up: CatchUp = CatchUpPolicy.LATEST,
        catch_up_window: timedelta | None = None,
    ) -> Schedule:
        """Start a run of `version` with `payload` at each occurrence of `cron` or `every`.

        Give exactly one of `cron` (five fields, read in `timezone`) and `every` (at
        least a second). Each occurrence starts one run, with the reference id
        `schedule:<id>:<occurrence ms>`; `overlap` says what happens while the
        previous run is still going; `catch_up` which missed occurrences start after
        downtime (`all`: those within `catch_up_window`, a day by default). Each
        run's deadline is its start plus `timeout`,
        the version's `timeout` unless given (as `version.start` does). Creating the
        same definition under `name` again returns the existing schedule; another
        definition (the timeout included) is a `ConflictError`.
        """
        schedule_id = new_schedule_id()
        sealed, fingerprint = seal_input(
            self._client.codec,
            version.encode_payload(payload),
            CodecContext.schedule_input(schedule_id),
        )
        try:
            request = CreateScheduleRequest.model_validate(
                {
                    "name": name,
                    "id": schedule_id,
                    "workflow": version.workflow,
                    "version": version.version,
                    "input": sealed,
                    "input_hash": fingerprint,
                    "cron": cron,
                    "every": every,
                    "timezone": timezone,
                    "overlap": overlap,
                    "pool": pool,
                    "timeout": timeout if timeout is not None else version.timeout,
                    "catch_up": catch_up,
                    "catch_up_window": catch_up_window,
                }
            )
        except ValidationError as exc:
            raise PayloadValidationError.from_pydantic(f"invalid schedule {name!r}", exc) from None
        return await self._open(self._client._call("POST", "/schedules", Schedule, request))

    async def list(self, *, limit: int = 50, cursor: str | None = None) -> SchedulePage:
        """One page of schedules, newest first; pass `next_cursor` back as `cursor`."""
        params = [("limit", str(limit))] + ([("cursor", cursor)] if cursor is not None else [])
        page = await self._client._call("GET", "/schedules", SchedulePage, params=params)
        codec = self._client.codec
        return page.model_copy(
            update={"schedules": [open_schedule(codec, s) for s in page.schedules]}
        )

    async def _open(self, call: Awaitable[Schedule]) -> Schedule:
        return open_schedule(self._client.codec, await call)

    async def get(self, schedule_id: str) -> Schedule:
        """One schedule, with its next fire time and last run."""
        return await self._open(
            self._client._call("GET", api_path("schedules", schedule_id), Schedule)
        )

    async def update(
        self,
        schedule_id: str,
        *,
        version: SchedulableVersion[InT] | None = None,
        payload: InT | _Keep = KEEP,
        cron: str | None = None,
        every: timedelta | None = None,
        timezone: str | None = None,
        overlap: Overlap | None = None,
        timeout: timedelta | None | _Keep = KEEP,
        paused: bool | None = None,
        catch_up: CatchUp | None = None,
        catch_up_window: timedelta | None | _Keep = KEEP,
    ) -> Schedule:
        """Change the schedule in place: its id, name and past runs stay.

        Only what is given changes. `cron` or `every` replaces the cadence (give at
        most one), which goes on from its first occurrence after now; `paused`
        pauses or resumes it. A new `payload` is encoded by `version` (the
        schedule's; as JSON without it) and sealed as at creation. `timeout=None`
        or `catch_up_window=None` clears it.
        """
        fields: dict[str, Any] = {
            name: value
            for name, value in (
                ("cron", cron),
                ("every", every),
                ("timezone", timezone),
                ("overlap", overlap),
                ("paused", paused),
                ("catch_up", catch_up),
            )
            if value is not None
        }
        fields |= {
            name: value
            for name, value in (("timeout", timeout), ("catch_up_window", catch_up_window))
            if value is not KEEP
        }
        if not isinstance(payload, _Keep):
            encoded = (
                cast("JsonValue", payload) if version is None else version.encode_payload(payload)
            )
            fields["input"], fields["input_hash"] = seal_input(
                self._client.codec, encoded, CodecContext.schedule_input(schedule_id)
            )
        try:
            request = UpdateScheduleRequest.model_validate(fields)
        except ValidationError as exc:
            raise PayloadValidationError.from_pydantic(
                f"invalid update of schedule {schedule_id}", exc
            ) from None
        path = api_path("schedules", schedule_id)
        return await self._open(self._client._call("PATCH", path, Schedule, request))

    async def backfill(self, schedule_id: str, start: datetime, end: datetime) -> BackfillResponse:
        """Start the run of each past occurrence in [`start`, `end`), once per occurrence.

        Idempotent: each run has its occurrence's reference id, so a second backfill
        (or the schedule's own firing) starts nothing twice. At most `MAX_BACKFILL`
        occurrences at a time; the overlap policy does not apply.
        """
        try:
            request = BackfillRequest(start=start, end=end)
        except ValidationError as exc:
            raise PayloadValidationError.from_pydantic(
                f"invalid backfill of schedule {schedule_id}", exc
            ) from None
        path = api_path("schedules", schedule_id, "backfill")
        return await self._client._call("POST", path, BackfillResponse, request)

    async def pause(self, schedule_id: str) -> Schedule:
        """Stop firing until resumed."""
        return await self._open(
            self._client._call("POST", api_path("schedules", schedule_id, "pause"), Schedule)
        )

    async def resume(self, schedule_id: str) -> Schedule:
        """Fire again, from the first occurrence after now."""
        return await self._open(
            self._client._call("POST", api_path("schedules", schedule_id, "resume"), Schedule)
        )

    async def delete(self, schedule_id: str) -> Schedule:
        """Delete the schedule (the runs it started stay); the schedule as it was."""
        return await self._open(
            self._client._call("DELETE", api_path("schedules", schedule_id), Schedule)
        )
