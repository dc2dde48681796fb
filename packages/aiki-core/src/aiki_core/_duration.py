"""Durations: `timedelta` in Python, whole milliseconds on the wire.

`Duration` is the annotated type the wire models use. It accepts a `timedelta` or a
whole number of milliseconds (`5000`, or `5000.0`: JSON Schema's integers), rejects
negative values, strings and durations over `MAX_DURATION`, and serializes to an
integer. Sub-millisecond parts are truncated toward zero: the server's clock has
millisecond resolution, and truncation keeps `from_millis(to_millis(d))` idempotent.
A field with tighter limits adds `DurationRange(...)`, which checks them and states
them in the JSON Schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, WithJsonSchema
from pydantic_core import core_schema

from aiki_core._wire import whole_number

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
    from pydantic.json_schema import JsonSchemaValue

__all__ = [
    "MAX_DURATION",
    "Duration",
    "DurationRange",
    "duration_field",
    "from_millis",
    "to_millis",
]

_ONE_MS = timedelta(milliseconds=1)

MAX_DURATION = timedelta(days=36_525)
"""The longest duration on the wire, 100 years: a due time the server computes from
now (a delayed start, a deadline, a schedule's next occurrence) stays in the calendar."""


def to_millis(duration: timedelta) -> int:
    """Whole milliseconds in `duration`; raises `ValueError` when it is negative."""
    if duration < timedelta(0):
        raise ValueError(f"a duration cannot be negative, got {duration!r}")
    return duration // _ONE_MS


def from_millis(millis: int) -> timedelta:
    """The `timedelta` of `millis` milliseconds; `ValueError` when negative or too long."""
    if millis < 0:
        raise ValueError(f"a duration cannot be negative, got {millis} ms")
    if millis > to_millis(MAX_DURATION):
        raise ValueError(f"a duration of {millis} ms is longer than {MAX_DURATION.days} days")
    return timedelta(milliseconds=millis)


def _parse(value: object) -> object:
    # bool is an int subclass, and pydantic would read a float as seconds and a string
    # as ISO 8601: all bugs on a wire that speaks whole milliseconds
    value = whole_number(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return from_millis(value)
    if isinstance(value, timedelta):
        return value
    raise ValueError("a duration is a whole number of milliseconds")


def _normalize(value: timedelta) -> timedelta:
    return from_millis(to_millis(value))


@dataclass(frozen=True, slots=True)
class DurationRange:
    """`Annotated` metadata of a `Duration` field with tighter limits than the type's.

    The limits are checked, and stated in the field's JSON Schema (`minimum`, `maximum`
    in milliseconds), so the OpenAPI document says what the server accepts.
    """

    at_least: timedelta = timedelta(0)
    at_most: timedelta = MAX_DURATION

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """The duration's own validation, then this range's check."""
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The duration's JSON Schema with this range's bounds."""
        json_schema = handler(schema)
        json_schema.update(minimum=to_millis(self.at_least), maximum=to_millis(self.at_most))
        return json_schema

    def _check(self, value: timedelta) -> timedelta:
        if value < self.at_least:
            raise ValueError(f"must be at least {to_millis(self.at_least)} ms")
        if value > self.at_most:
            raise ValueError(f"must be at most {to_millis(self.at_most)} ms")
        return value


Duration = Annotated[
    timedelta,
    BeforeValidator(_parse),
    AfterValidator(_normalize),
    PlainSerializer(to_millis, return_type=int, when_used="json"),
    WithJsonSchema(
        {
            "type": "integer",
            "minimum": 0,
            "maximum": to_millis(MAX_DURATION),
            "description": "milliseconds",
        }
    ),
]
"""A `timedelta` from 0 to `MAX_DURATION`, carried as whole milliseconds in JSON."""


def duration_field(default: timedelta, **field: Any) -> Any:
    """`Field(default=...)` of a `Duration` field, with the default in milliseconds.

    pydantic would show the `timedelta` in the JSON Schema as ISO 8601, which the
    wire refuses.
    """
    return Field(default=default, json_schema_extra={"default": to_millis(default)}, **field)
