"""An endpoint's health, kept on its `endpoints` row so every replica sees the same.

A failed push counts one more failure in a row (`failures`), keeps when the streak
began (`failing_since`) and what the last failure said (`last_error`), and sets
`retry_at`, before which no replica pushes to the endpoint:

- a back-off after each of the first failures: 1 s doubling per failure up to 60 s,
  half of it random (so replicas and endpoints do not retry in step), and never
  sooner than the endpoint's `Retry-After` (itself capped at the longest cool-off);
- from `OPEN_AFTER` failures in a row the circuit is open: `retry_at` is the
  cool-off (30 s, doubling per further failure up to ten times that), and once it
  has passed one replica takes the one trial push (`take_trial`): it moves
  `retry_at` past the trial's end, so no other push goes out until the trial's
  answer closes the circuit (a success) or opens it again (a failure).

A success resets the row. Each change is one short write transaction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiki_server._endpoints import CIRCUIT_OPENS_AFTER

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiki_server._storage._database import Database, Tx

OPEN_AFTER = CIRCUIT_OPENS_AFTER
"""Failed pushes in a row that open an endpoint's circuit (its detail says `open`)."""
BACKOFF_BASE_MS = 1_000
BACKOFF_CAP_MS = 60_000
COOL_OFF_MS = 30_000
"""The default first cool-off of an open circuit."""
COOL_OFF_GROWTH = 10
"""The longest cool-off, in first cool-offs (30 s grows to at most 5 min)."""


@dataclass(frozen=True, slots=True)
class PushBackoff:
    """How long an endpoint is left alone after failed pushes."""

    cool_off_ms: int = COOL_OFF_MS
    """The first cool-off of an open circuit; it doubles up to ten times this."""
    rand: Callable[[], float] = random.random

    def delay_ms(self, failures: int, retry_after_ms: int | None) -> int:
        """The pause after the `failures`-th failure in a row, honouring `Retry-After`."""
        cap = self.cool_off_ms * COOL_OFF_GROWTH
        if failures >= OPEN_AFTER:
            delay = min(self.cool_off_ms * 2 ** min(failures - OPEN_AFTER, 30), cap)
        else:
            full = min(BACKOFF_BASE_MS * 2 ** (failures - 1), BACKOFF_CAP_MS)
            delay = full // 2 + int(self.rand() * (full - full // 2))
        if retry_after_ms is not None:
            delay = max(delay, min(retry_after_ms, cap))
        return int(delay)


async def record_failure(
    db: Database,
    endpoint_id: str,
    now: int,
    error: str,
    retry_after_ms: int | None,
    backoff: PushBackoff,
) -> tuple[int, int]:
    """Count a failed push on the endpoint's row; (failures in a row, `retry_at`) now.

    Failures are 0 when the endpoint is gone (nothing is written then).
    """

    async def note(tx: Tx) -> tuple[int, int]:
        row = await tx.fetchrow(
            f"SELECT failures FROM endpoints WHERE id = $1{tx.lock_rows}", endpoint_id
        )
        failures = 0 if row is None else int(row["failures"]) + 1
        retry_at = now + backoff.delay_ms(max(failures, 1), retry_after_ms)
        await tx.execute(
            "UPDATE endpoints SET failures = $2, failing_since = COALESCE(failing_since, $3),"
            " last_error = $4, retry_at = $5 WHERE id = $1",
            endpoint_id,
            failures,
            now,
            error[:500],
            retry_at,
        )
        return failures, retry_at

    return await db.write(note)


async def record_success(db: Database, endpoint_id: str) -> None:
    """A push succeeded: the endpoint is healthy again (a no-op write when it was)."""
    await db.write(
        lambda tx: tx.execute(
            "UPDATE endpoints SET failures = 0, failing_since = NULL, last_error = NULL,"
            " retry_at = NULL WHERE id = $1 AND (failures > 0 OR retry_at IS NOT NULL)",
            endpoint_id,
        )
    )


async def take_trial(db: Database, endpoint_id: str, now: int, lease_ms: int) -> int | None:
    """Take the one trial push of an open circuit whose cool-off has passed.

    Answers the `retry_at` it set (now + `lease_ms`: long enough for the trial to end)
    when this replica got the trial, or `None` when another one has it, or the
    circuit is not open and due.
    """
    lease = now + lease_ms

    async def take(tx: Tx) -> int | None:
        taken = await tx.execute(
            "UPDATE endpoints SET retry_at = $3 WHERE id = $1 AND failures >= $4"
            " AND retry_at IS NOT NULL AND retry_at <= $2",
            endpoint_id,
            now,
            lease,
            OPEN_AFTER,
        )
        return lease if taken else None

    return await db.write(take)


async def give_back_trial(db: Database, endpoint_id: str, lease: int, now: int) -> None:
    """Give back a trial that found nothing to push: the next due run is tried at once."""
    await db.write(
        lambda tx: tx.execute(
            "UPDATE endpoints SET retry_at = $3 WHERE id = $1 AND retry_at = $2",
            endpoint_id,
            lease,
            now,
        )
    )
