from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from aiki_core.wire import MAX_DURATION, Duration, from_millis, to_millis

DURATION: TypeAdapter[timedelta] = TypeAdapter(Duration)


class Timer(BaseModel):
    after: Duration
    every: Duration | None = None


@pytest.mark.parametrize(
    ("duration", "millis"),
    [
        (timedelta(0), 0),
        (timedelta(milliseconds=1), 1),
        (timedelta(seconds=1.5), 1500),
        (timedelta(days=2, hours=3), 183_600_000),
        (timedelta(days=36_525), 3_155_760_000_000),
    ],
)
def test_to_and_from_millis(duration: timedelta, millis: int) -> None:
    assert to_millis(duration) == millis
    assert from_millis(millis) == duration


def test_sub_millisecond_parts_are_truncated() -> None:
    assert to_millis(timedelta(microseconds=999)) == 0
    assert to_millis(timedelta(milliseconds=2, microseconds=999)) == 2
    assert from_millis(to_millis(timedelta(microseconds=1_999))) == timedelta(milliseconds=1)
    # idempotent
    once = from_millis(to_millis(timedelta(seconds=1, microseconds=123_456)))
    assert once == timedelta(seconds=1, milliseconds=123)
    assert from_millis(to_millis(once)) == once


def test_negatives_raise() -> None:
    with pytest.raises(ValueError, match="negative"):
        to_millis(timedelta(microseconds=-1))
    with pytest.raises(ValueError, match="negative"):
        from_millis(-1)


def test_past_100_years_raises() -> None:
    assert MAX_DURATION == timedelta(days=36_525)
    assert from_millis(to_millis(MAX_DURATION)) == MAX_DURATION
    with pytest.raises(ValueError, match="longer than 36525 days"):
        from_millis(to_millis(MAX_DURATION) + 1)
    with pytest.raises(ValidationError):
        Timer(after=MAX_DURATION + timedelta(milliseconds=1))


def test_field_accepts_milliseconds_and_timedelta() -> None:
    assert Timer(after=1500).after == timedelta(milliseconds=1500)
    # JSON Schema's integers include a whole number written with a fraction
    assert Timer(after=1500.0).after == timedelta(milliseconds=1500)
    assert DURATION.validate_json("5000.0") == timedelta(seconds=5)
    assert Timer(after=timedelta(minutes=2)).after == timedelta(minutes=2)
    assert DURATION.validate_python(0) == timedelta(0)
    assert DURATION.validate_json("250") == timedelta(milliseconds=250)


def test_field_truncates_microseconds() -> None:
    timer = Timer(after=timedelta(milliseconds=7, microseconds=900))
    assert timer.after == timedelta(milliseconds=7)


@pytest.mark.parametrize(
    "value", [1.5, True, False, -1, timedelta(milliseconds=-1), "soon", "5", "PT5S", None]
)
def test_field_rejects_fractions_bools_strings_and_negatives(value: Any) -> None:
    with pytest.raises(ValidationError):
        DURATION.validate_python(value)
    with pytest.raises(ValidationError):
        Timer(after=value)


@pytest.mark.parametrize("text", ["1.5", '"1"', '"P1D"', "true", "-5", "null"])
def test_field_rejects_bad_json(text: str) -> None:
    with pytest.raises(ValidationError):
        DURATION.validate_json(text)


def test_field_serializes_as_integer_milliseconds() -> None:
    timer = Timer(after=timedelta(seconds=3), every=timedelta(hours=1))
    assert timer.model_dump_json() == '{"after":3000,"every":3600000}'
    assert timer.model_dump() == {"after": timedelta(seconds=3), "every": timedelta(hours=1)}
    assert DURATION.dump_json(timedelta(seconds=2)) == b"2000"
    assert DURATION.dump_python(timedelta(seconds=2), mode="json") == 2000


def test_json_schema_says_integer() -> None:
    schema = DURATION.json_schema()
    assert schema["type"] == "integer"
    assert schema["minimum"] == 0
    assert schema["maximum"] == to_millis(MAX_DURATION)
    after = Timer.model_json_schema()["properties"]["after"]
    assert after["type"] == "integer"
