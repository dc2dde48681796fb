"""Flow control state below `_flow`: how claims order runs, and which have a limit.

The settings of fairness and priorities (see `_flow`), and the replica's view of
which workflows have a concurrency limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol

from aiki_core.wire import to_millis

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

_LIMITS_READ_EVERY = 1.0
"""Seconds the replica's view of the limited workflows is used before it is read again."""
_LIMITS_KEPT = 10_000
"""More limited workflows than this, and every workflow counts as limited."""


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


class _Reader(Protocol):
    """What the view reads through: a transaction (`_storage`'s `Tx`, a layer above)."""

    async def fetch(self, sql: str, *args: Any) -> Sequence[Mapping[str, Any]]: ...


class LimitedWorkflows:
    """Which (namespace, workflow) pairs have a concurrency limit, as this replica read them.

    A hint, not a rule: when a run stops running, the push dispatcher is woken at once
    if its workflow has a limit (its slot is free). The view is read again at most once
    a second, and forgotten at once when this replica writes a limit; a limit another
    replica just wrote may be missed for that second. Claims never use it: they read
    the limits as they lock runs, and their long-polls are woken by every freed slot
    of their workflows.
    """

    def __init__(self) -> None:
        self._known: frozenset[tuple[str, str]] | None = None
        self._read_at = 0.0

    async def includes(self, tx: _Reader, namespace: str, workflow: str) -> bool:
        """Whether `workflow` of `namespace` has a limit (read through `tx` when stale)."""
        if self._known is None or monotonic() - self._read_at >= _LIMITS_READ_EVERY:
            rows = await tx.fetch(
                "SELECT namespace, workflow FROM concurrency_limits LIMIT $1", _LIMITS_KEPT + 1
            )
            self._known = frozenset((row["namespace"], row["workflow"]) for row in rows)
            self._read_at = monotonic()
        return len(self._known) > _LIMITS_KEPT or (namespace, workflow) in self._known

    def forget(self) -> None:
        """A limit was written here: read the view again at its next use."""
        self._known = None
