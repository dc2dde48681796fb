"""Retry policies for tasks and workflows.

A `RetryPolicy` is data: it travels to the server with a task's record so the
server can schedule a long back-off durably. `delay_after(attempt)` is the one
formula both sides use.

Delays: `fixed` waits `base_delay` between attempts; `exponential` waits
`base_delay * multiplier ** (attempt - 1)`. Jitter then scales the delay by a random
factor in `[1 - jitter, 1 + jitter]` (so many clients failing together do not retry
together), and `max_delay` caps the result, jitter included.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import TYPE_CHECKING, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aiki_core._duration import MAX_DURATION, Duration, duration_field
from aiki_core._wire import MAX_COUNT, Integer, Number

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RetryPolicy"]

_DEFAULT_MAX_DELAY = timedelta(hours=1)


class RetryPolicy(BaseModel):
    """How often, and after how long, a failed attempt is tried again.

    Build one with `RetryPolicy.never()`, `RetryPolicy.fixed(...)` or
    `RetryPolicy.exponential(...)`:

        RetryPolicy.exponential(max_attempts=5, base_delay=timedelta(seconds=1))
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={
            "if": {"properties": {"kind": {"const": "never"}}},
            "then": {"properties": {"max_attempts": {"const": 1}}},
        },
    )

    kind: Literal["never", "fixed", "exponential"]
    max_attempts: Integer = Field(
        ge=1, le=MAX_COUNT, description="Attempts in all, the first included."
    )
    base_delay: Duration = duration_field(timedelta(0))
    multiplier: Number = Field(default=2.0, ge=1.0, le=100.0)
    max_delay: Duration = duration_field(
        _DEFAULT_MAX_DELAY, description="Caps every delay, `base_delay` included."
    )
    jitter: Number = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.kind == "never" and self.max_attempts != 1:
            raise ValueError("a 'never' policy makes exactly one attempt")
        return self

    @classmethod
    def never(cls) -> Self:
        """One attempt; a failure is final."""
        return cls(kind="never", max_attempts=1)

    @classmethod
    def fixed(cls, *, max_attempts: int, delay: timedelta, jitter: float = 0.0) -> Self:
        """Up to `max_attempts` attempts, `delay` apart.

        A `max_attempts` past `MAX_COUNT` (`sys.maxsize`, say: "retry forever") is
        taken as `MAX_COUNT`, the most the wire carries.
        """
        return cls(
            kind="fixed",
            max_attempts=min(max_attempts, MAX_COUNT),
            base_delay=delay,
            max_delay=max(delay, _DEFAULT_MAX_DELAY),
            jitter=jitter,
        )

    @classmethod
    def exponential(
        cls,
        *,
        max_attempts: int,
        base_delay: timedelta,
        multiplier: float = 2.0,
        max_delay: timedelta = _DEFAULT_MAX_DELAY,
        jitter: float = 0.1,
    ) -> Self:
        """Up to `max_attempts` attempts; each wait `multiplier` times the previous.

        Raises `ValueError` if `max_delay` is shorter than `base_delay` (the wire model
        takes such a policy, whose cap then applies to every delay). A `max_attempts`
        past `MAX_COUNT` is taken as `MAX_COUNT`, and a `max_delay` past `MAX_DURATION`
        (`timedelta.max`: "no cap") as `MAX_DURATION`, the most the wire carries.
        """
        if max_delay < base_delay:
            raise ValueError("max_delay must not be shorter than base_delay")
        return cls(
            kind="exponential",
            max_attempts=min(max_attempts, MAX_COUNT),
            base_delay=base_delay,
            multiplier=multiplier,
            max_delay=min(max_delay, MAX_DURATION),
            jitter=jitter,
        )

    def delay_after(
        self, attempt: int, *, rand: Callable[[], float] = random.random
    ) -> timedelta | None:
        """The wait before the attempt after `attempt` (1-based), or `None` when none is left.

        `rand` returns a float in `[0, 1)`; pass a fixed one to make jitter deterministic.
        """
        if attempt < 1:
            raise ValueError(f"attempts are numbered from 1, got {attempt}")
        if attempt >= self.max_attempts:
            return None
        base_ms = self.base_delay / timedelta(milliseconds=1)
        max_ms = self.max_delay / timedelta(milliseconds=1)
        delay_ms = base_ms
        if self.kind == "exponential" and base_ms > 0:
            try:
                delay_ms = min(base_ms * self.multiplier ** (attempt - 1), max_ms)
            except OverflowError:  # a late attempt of a steep curve: the cap applies
                delay_ms = max_ms
        if self.jitter:
            delay_ms *= 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return timedelta(milliseconds=int(min(delay_ms, max_ms)))
