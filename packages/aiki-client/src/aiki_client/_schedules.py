"""`client.schedules`: create, list, read, pause, resume and delete schedules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeVar

from pydantic import ValidationError
from ulid import ULID

from aiki_client._http import api_path
from aiki_client._sealing import open_schedule, seal_input
from aiki_core import CodecContext, OverlapPolicy, PayloadValidationError
from aiki_core.wire import DEFAULT_POOL, CreateScheduleRequest, Schedule, ScheduleId, SchedulePage

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from datetime import timedelta

    from aiki_client._client import Client
    from aiki_core.sdk import SchedulableVersion

InT = TypeVar("InT")

Overlap = OverlapPolicy | Literal["skip", "allow", "cancel_previous"]


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
    ) -> Schedule:
        """Start a run of `version` with `payload` at each occurrence of `cron` or `every`.

        Give exactly one of `cron` (five fields, read in `timezone`) and `every` (at
        least a second). Each occurrence starts one run, with the reference id
        `schedule:<id>:<occurrence ms>`; `overlap` says what happens while the
        previous run is still going. Each run's deadline is its start plus `timeout`,
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
