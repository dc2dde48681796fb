"""Flow control: concurrency limits per workflow and key, and run priorities.

A workflow version declares `Concurrency(limit, key=..., strategy=...)`; where a run
starts, the key function gets the typed input and its answer is sent in clear beside
the (possibly sealed) input, as a `ConcurrencySpec`. The server then claims at most
`limit` runs of one key at a time, and applies the strategy when the run starts.
Operators read and override a workflow's limit at run time (`ConcurrencyLimit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BeforeValidator, Field, Strict, StringConstraints

from aiki_core._exceptions import ConcurrencyKeyError
from aiki_core._wire import NO_NUL, Boolean, RequestModel, ResponseModel, whole_number

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "MAX_CONCURRENCY_KEY_LENGTH",
    "MAX_PRIORITY",
    "Concurrency",
    "ConcurrencyKey",
    "ConcurrencyLimit",
    "ConcurrencyLimitPage",
    "ConcurrencySpec",
    "ConcurrencyStrategy",
    "Priority",
    "SetConcurrencyLimitRequest",
]

MAX_PRIORITY = 9
"""The highest run priority (0 is the default and the lowest)."""
MAX_CONCURRENCY_KEY_LENGTH = 200
"""The longest concurrency key, in characters."""
_MAX_LIMIT = 1_000_000

InT = TypeVar("InT")

Limit = Annotated[int, Strict(), Field(ge=1, le=_MAX_LIMIT), BeforeValidator(whole_number)]
"""A concurrency limit: runs of one key (or workflow) running at once."""

Priority = Annotated[int, Strict(), Field(ge=0, le=MAX_PRIORITY), BeforeValidator(whole_number)]
"""A run's priority: 0 (default, lowest) to 9 (highest)."""

ConcurrencyKey = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_CONCURRENCY_KEY_LENGTH, pattern=NO_NUL)
]
"""What a workflow's runs are grouped by for their concurrency limit (a tenant, say)."""


class ConcurrencyStrategy(StrEnum):
    """What a start does when its key already has `limit` runs queued or running."""

    QUEUE = "queue"
    """The new run waits in the queue until a slot frees up."""
    CANCEL_NEWEST = "cancel_newest"
    """The new run is created cancelled: the runs already there keep their places."""
    CANCEL_IN_PROGRESS = "cancel_in_progress"
    """The oldest queued or running runs of the key are cancelled to make room."""


StrategyName = ConcurrencyStrategy | Literal["queue", "cancel_newest", "cancel_in_progress"]


class ConcurrencySpec(RequestModel):
    """A start's concurrency declaration: its key (computed by the starter) and limit."""

    key: ConcurrencyKey | None = Field(
        default=None,
        description="The run's concurrency key; without one, the limit counts the whole"
        " workflow's runs.",
    )
    limit: Limit = Field(description="Runs of one key running at once.")
    strategy: ConcurrencyStrategy = ConcurrencyStrategy.QUEUE


class SetConcurrencyLimitRequest(RequestModel):
    """An operator's limit for a workflow: it wins over the code's until it is cleared."""

    limit: Limit
    strategy: ConcurrencyStrategy = ConcurrencyStrategy.QUEUE
    per_key: Boolean = Field(
        default=True,
        description="Count each concurrency key apart (else all the workflow's runs at once).",
    )


class ConcurrencyLimit(ResponseModel):
    """The concurrency limit in effect for a workflow (all its versions)."""

    workflow: str
    limit: int
    strategy: ConcurrencyStrategy
    per_key: bool
    source: Literal["code", "operator"] = Field(
        description="`code`: declared by the last start; `operator`: set through the API,"
        " in effect until cleared."
    )
    updated_at: AwareDatetime


class ConcurrencyLimitPage(ResponseModel):
    """Every concurrency limit of a namespace, by workflow name."""

    limits: list[ConcurrencyLimit]


@dataclass(frozen=True, slots=True)
class Concurrency(Generic[InT]):
    """At most `limit` runs of a workflow (per `key`, when given) execute at once.

        @orders.v("1.0.0", concurrency=Concurrency(limit=2, key=lambda o: o.customer_id))

    `key` gets the run's typed input where the run starts, and its answer (a string
    of 1 to 200 characters) is stored in clear beside the input, even a sealed one.
    `strategy` says what a start does when the key already has `limit` runs queued
    or running. A `limit` below 1 raises `ValueError`.
    """

    limit: int
    key: Callable[[InT], str] | None = None
    strategy: StrategyName = ConcurrencyStrategy.QUEUE

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int):
            raise TypeError(f"Concurrency limit must be an int, got {self.limit!r}")
        if not 1 <= self.limit <= _MAX_LIMIT:
            raise ValueError(f"Concurrency limit must be 1 to {_MAX_LIMIT}, got {self.limit}")
        try:
            strategy = ConcurrencyStrategy(self.strategy)
        except ValueError:
            names = ", ".join(s.value for s in ConcurrencyStrategy)
            raise ValueError(
                f"Concurrency strategy must be one of {names}, got {self.strategy!r}"
            ) from None
        object.__setattr__(self, "strategy", strategy)

    def spec(self, workflow: str, payload: InT) -> ConcurrencySpec:
        """The declaration a start of `payload` sends; `ConcurrencyKeyError` if no key comes."""
        key = None
        if self.key is not None:
            try:
                key = self.key(payload)
            except Exception as exc:
                raise ConcurrencyKeyError(workflow, f"{type(exc).__name__}: {exc}") from exc
            if not isinstance(key, str):
                raise ConcurrencyKeyError(workflow, f"it returned {type(key).__name__}, not str")
            if not 1 <= len(key) <= MAX_CONCURRENCY_KEY_LENGTH or "\x00" in key:
                raise ConcurrencyKeyError(
                    workflow,
                    f"it returned a key of {len(key)} characters; a key has 1 to"
                    f" {MAX_CONCURRENCY_KEY_LENGTH}, without NUL",
                )
        return ConcurrencySpec(key=key, limit=self.limit, strategy=self.strategy)
