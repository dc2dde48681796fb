"""Events: named, typed messages a run can wait for, sent by a client or a webhook.

    approved = event("approved", Approval)

    got = await approved.wait(run, timeout=timedelta(days=1))  # in the workflow
    await handle.send_event(approved, Approval(by="ann"))      # from a client

An event sent before the run waits for it is kept until it does. Waits on one name
are matched to events in the order both happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError

from aiki_core import PayloadValidationError

if TYPE_CHECKING:
    from datetime import timedelta

    from pydantic import JsonValue

    from aiki_workflow._run import WorkflowRun

DataT = TypeVar("DataT")


@dataclass(frozen=True, slots=True)
class EventResult(Generic[DataT]):
    """What a wait got: the event's data, or nothing because its timeout passed."""

    data: DataT | None
    timed_out: bool


class Event(Generic[DataT]):
    """An event called `name` whose data is a `DataT` (validated with pydantic)."""

    def __init__(self, name: str, data_type: type[DataT]) -> None:
        self.name = name
        self._type = TypeAdapter[DataT](data_type)

    def encode_data(self, data: DataT) -> JsonValue:
        """Validate `data` and return it as JSON values; `PayloadValidationError` if wrong."""
        try:
            value: JsonValue = self._type.dump_python(self._type.validate_python(data), mode="json")
        except ValidationError as exc:
            raise PayloadValidationError.from_pydantic(
                f"event {self.name!r} got invalid data", exc
            ) from None
        return value

    def json_schema(self) -> dict[str, JsonValue]:
        """The JSON Schema of the event's data (a webhook checks bodies against it)."""
        schema: dict[str, JsonValue] = self._type.json_schema()
        return schema

    async def wait(
        self, run: WorkflowRun, *, timeout: timedelta | None = None
    ) -> EventResult[DataT]:
        """Wait durably for the next such event; the run is let go until it arrives.

        With `timeout`, the result says `timed_out` once it passes first.
        """
        received, data = await run.wait_event(self.name, timeout)
        if not received:
            return EventResult(data=None, timed_out=True)
        try:
            return EventResult(data=self._type.validate_python(data), timed_out=False)
        except ValidationError as exc:
            raise PayloadValidationError.from_pydantic(
                f"run {run.id} received event {self.name!r} with data of the wrong type", exc
            ) from None

    def __repr__(self) -> str:
        return f"<Event {self.name!r}>"


def event(name: str, data_type: type[DataT]) -> Event[DataT]:
    """An event called `name` carrying a `data_type`."""
    return Event(name, data_type)
