"""Time, in whole milliseconds since the epoch (UTC), as the database stores it."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import overload

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

Clock = Callable[[], int]
"""Returns the current time in epoch milliseconds; tests may pass their own."""


def system_clock() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return (moment - _EPOCH) // _ONE_MS


@overload
def from_ms(ms: int) -> datetime: ...
@overload
def from_ms(ms: None) -> None: ...
def from_ms(ms: int | None) -> datetime | None:
    """The aware UTC datetime of epoch milliseconds (`None` stays `None`), to the millisecond.

    In integers all the way: `ms / 1000` is a float, off by a microsecond for many times.
    """
    return None if ms is None else _EPOCH + ms * _ONE_MS


MAX_MS = to_ms(datetime.max.replace(tzinfo=UTC))
"""The last millisecond a timestamp on the wire can show (the end of the year 9999)."""
