"""How claims order queued runs: the settings of fairness and priorities (see `_flow`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from aiki_core.wire import to_millis


@dataclass(frozen=True, slots=True)
class FlowSettings:
    """How claims order queued runs: fairness across concurrency keys, and priorities.

    A run's claim order (its rank) is its ready time, moved back by `fair_share_quantum`
    behind each run of its key still queued, and forward by `priority_step` per level
    of priority.
    """

    fair_share_quantum: timedelta = timedelta(seconds=1)
    """How far apart a key's backlog is spread, so other keys' runs interleave."""
    priority_step: timedelta = timedelta(seconds=60)
    """How much earlier one level of priority puts a run; a run waiting longer than
    `9 * priority_step` goes before every newer one, whatever their priority."""

    def __post_init__(self) -> None:
        for name in ("fair_share_quantum", "priority_step"):
            if getattr(self, name) < timedelta(0):
                raise ValueError(f"{name} must not be negative")

    @property
    def quantum_ms(self) -> int:
        """`fair_share_quantum` in milliseconds."""
        return to_millis(self.fair_share_quantum)

    @property
    def step_ms(self) -> int:
        """`priority_step` in milliseconds."""
        return to_millis(self.priority_step)
