"""Durations: `timedelta` in Python, whole milliseconds on the wire.

`Duration` is the annotated type the wire models use. It accepts a `timedelta` or a
number of milliseconds, rejects negative values, and serializes to an integer.
Sub-millisecond parts are truncated toward zero: the server's clock has millisecond
resolution, and truncation keeps `from_millis(to_millis(d))` idempotent.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema

__all__ = ["Duration", "from_millis", "to_millis"]

_ONE_MS = timedelta(milliseconds=1)


def to_millis(duration: timedelta) -> int:
    """Whole milliseconds in `duration`; raises `ValueError` when it is negative."""
    if duration < timedelta(0):
        raise ValueError(f"a duration cannot be negative, got {duration!r}")
    return duration // _ONE_MS


def from_millis(millis: int) -> timedelta:
    """The `timedelta` of `millis` milliseconds; `ValueError` when negative or too long."""
    if millis < 0:
        raise ValueError(f"a duration cannot be negative, got {millis} ms")
    try:
        return timedelta(milliseconds=millis)
    except OverflowError:
        raise ValueError(f"a duration of {millis} ms is too long") from None


def _parse(value: object) -> object:
    # bool is an int subclass, and pydantic would read a float as seconds: both are bugs
    # on a wire that speaks whole milliseconds
    if isinstance(value, bool | float):
        raise ValueError("a duration must be a timedelta or whole milliseconds")
    if isinstance(value, int):
        return from_millis(value)
    return value  # a timedelta, or something pydantic's validation will name as wrong


def _normalize(value: timedelta) -> timedelta:
    return from_millis(to_millis(value))


Duration = Annotated[
    timedelta,
    BeforeValidator(_parse),
    AfterValidator(_normalize),
    PlainSerializer(to_millis, return_type=int, when_used="json"),
    WithJsonSchema({"type": "integer", "minimum": 0, "description": "milliseconds"}),
]
"""A non-negative `timedelta`, carried as whole milliseconds in JSON."""
