"""Rate limits: define them, and hand out their units (GCRA, one bucket row per key).

A limit of `limit` units per `per_ms` has the emission interval `per_ms / limit`.
Each key's bucket keeps `tat`, the end of the time its granted units take up: a
grant of `n` units at `now` takes `ceil(n * per_ms / limit)` ms from `now` on. A
request for `n` units is granted when `now >= tat + ceil((n - 1) * per_ms / limit)`:
the `n - 1` intervals before it must be free too, so that units granted together
never sit closer to their neighbours than spacing them one by one would have. So
between two grants of `a` and then `b` units at least `(a + b - 1) * per_ms / limit`
passes, and no window of `per_ms` sees more than `limit` units granted (for one
unit at a time it is exact spacing; a request for many units at once uses the limit
below its full rate). A request that cannot be granted now takes nothing and says
when it can (`retry_at`): nothing is reserved, the next request to come then wins.
A run's start reserves instead: its units are granted at the first time they can be
had, and the run is scheduled to start then.

A grant is one transaction on the bucket's row, locked (PostgreSQL `FOR UPDATE`;
SQLite's single writer), so the limit holds across workers and server replicas.
The grant time never goes back for a bucket (`now` is at least the bucket's last
grant), so replicas whose clocks differ a little still space grants as their ledger
shows them. Changing a limit keeps the buckets: it applies from each key's next
grant on, and during the change the window of the old and the new settings mix. A
key's last grant holds the next one back by at most `per` of the current setting, so
raising a limit is not held up by the slower setting's spacing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiki_core import ConflictError, RateLimitNotFoundError
from aiki_core.wire import (
    MAX_DURATION,
    AcquireRateLimitResponse,
    RateLimitInfo,
    RateLimitPage,
    from_millis,
    to_millis,
)
from aiki_server._clock import from_ms

if TYPE_CHECKING:
    from aiki_core.wire import SetRateLimitRequest
    from aiki_server._clock import Clock
    from aiki_server._storage._database import Database, Row, Tx


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to a request for units: granted at `at`, or to be asked again at `at`."""

    granted: bool
    at: int
    now: int
    """The server's time of the answer."""

    def wire(self) -> AcquireRateLimitResponse:
        """The answer as the API gives it."""
        if self.granted:
            return AcquireRateLimitResponse(granted=True, granted_at=from_ms(self.at))
        # reservations may put the time past the longest duration the wire says: the
        # client asks again then, and is told the rest
        after = min(self.at - self.now, to_millis(MAX_DURATION))
        return AcquireRateLimitResponse(
            granted=False, retry_at=from_ms(self.at), retry_after=from_millis(after)
        )


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _info(row: Row) -> RateLimitInfo:
    return RateLimitInfo(
        namespace=row["namespace"],
        name=row["name"],
        limit=row["limit"],
        per=from_millis(row["per_ms"]),
        updated_at=from_ms(row["updated_at"]),
    )


async def _limit(tx: Tx, namespace: str, name: str, lock: str = "") -> Row:
    row = await tx.fetchrow(
        'SELECT namespace, name, "limit", per_ms, updated_at FROM rate_limits'
        f" WHERE namespace = $1 AND name = $2{lock}",
        namespace,
        name,
    )
    if row is None:
        raise RateLimitNotFoundError(name)
    return row


async def acquire_in(
    tx: Tx,
    namespace: str,
    name: str,
    units: int,
    key: str,
    clock: Clock,
    *,
    reserve: bool = False,
    request_id: str | None = None,
) -> Grant:
    """Grant `units` of the limit `name` to `key` now, or say when they can be had.

    With `reserve`, the units are granted at the first time they can be had, which may
    be later than now (a run's start takes its units so, and starts then).
    The time is read from `clock` once the bucket is locked: a request that waited for
    the lock is granted at the time it got it, not at the time it asked. A request
    whose `request_id` made the key's last grant gets that grant back, taking nothing
    (it is asked again because its answer was lost).

    Raises `RateLimitNotFoundError` for an unknown limit and `ConflictError` for more
    units than the limit has, or for a reservation further off than `MAX_DURATION`, the
    longest delay a start may have (none writes anything). A conflict, not a 422: the
    request is well formed, and the same one is granted once the limit is raised.
    """
    # kept until commit: a delete of the limit waits for this grant, or this grant for
    # the delete (and then finds no limit), never a bucket left without its limit
    limit = await _limit(tx, namespace, name, tx.keep_rows)
    size, per_ms = int(limit["limit"]), int(limit["per_ms"])
    if units > size:
        raise ConflictError(
            f"{units} units of rate limit {name!r} asked at once; it grants at most {size}"
            f" per {per_ms} ms",
            details={"rate_limit": name, "units": units, "limit": size},
        )
    await tx.execute(
        "INSERT INTO rate_limit_buckets (namespace, name, key, tat, updated_at)"
        " VALUES ($1, $2, $3, 0, 0) ON CONFLICT (namespace, name, key) DO NOTHING",
        namespace,
        name,
        key,
    )
    bucket = await tx.fetchrow(
        "SELECT tat, updated_at, last_request FROM rate_limit_buckets"
        f" WHERE namespace = $1 AND name = $2 AND key = $3{tx.lock_rows}",
        namespace,
        name,
        key,
    )
    assert bucket is not None  # inserted above, and a limit's delete waits for this lock
    asked_at = clock()
    last = int(bucket["updated_at"])
    if request_id is not None and bucket["last_request"] == request_id:
        return Grant(granted=True, at=last, now=asked_at)
    now = max(asked_at, last)
    # a grant takes at most `per_ms` from its time on: the cap changes nothing while the
    # limit stays, and frees a key held back by a slower setting once the limit is raised
    tat = min(int(bucket["tat"]), last + per_ms)
    ready = tat + _ceil_div((units - 1) * per_ms, size)
    if now < ready and not reserve:
        return Grant(granted=False, at=ready, now=asked_at)
    at = max(now, ready)
    if at - asked_at > to_millis(MAX_DURATION):
        raise ConflictError(
            f"rate limit {name!r} has its units for key {key!r} reserved further off than"
            f" {MAX_DURATION.days} days",
            details={"rate_limit": name, "key": key, "reserved_until": from_ms(ready).isoformat()},
        )
    await tx.execute(
        "UPDATE rate_limit_buckets SET tat = $4, updated_at = $5, last_request = $6"
        " WHERE namespace = $1 AND name = $2 AND key = $3",
        namespace,
        name,
        key,
        at + _ceil_div(units * per_ms, size),
        at,
        request_id,
    )
    return Grant(granted=True, at=at, now=asked_at)


class RateLimits:
    """The rate limit operations of the API."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def set(self, namespace: str, name: str, req: SetRateLimitRequest) -> RateLimitInfo:
        """Define the limit, or change it (from each key's next grant on)."""

        async def upsert(tx: Tx) -> RateLimitInfo:
            await tx.execute(
                'INSERT INTO rate_limits (namespace, name, "limit", per_ms, updated_at)'
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (namespace, name) DO UPDATE"
                ' SET "limit" = excluded."limit", per_ms = excluded.per_ms,'
                " updated_at = excluded.updated_at",
                namespace,
                name,
                req.limit,
                to_millis(req.per),
                self._clock(),
            )
            return _info(await _limit(tx, namespace, name))

        return await self._db.write(upsert)

    async def get(self, namespace: str, name: str) -> RateLimitInfo:
        """One limit."""
        async with self._db.reader() as tx:
            return _info(await _limit(tx, namespace, name))

    async def list(self, namespace: str) -> RateLimitPage:
        """Every limit of the namespace, by name."""
        async with self._db.reader(off_loop=True) as tx:
            rows = await tx.fetch(
                'SELECT namespace, name, "limit", per_ms, updated_at FROM rate_limits'
                " WHERE namespace = $1 ORDER BY name",
                namespace,
            )
        return RateLimitPage(rate_limits=[_info(row) for row in rows])

    async def delete(self, namespace: str, name: str) -> RateLimitInfo:
        """Delete the limit and its buckets; the limit as it was."""

        async def remove(tx: Tx) -> RateLimitInfo:
            # the limit's row first, as an acquisition keeps it before its bucket: locked
            # in the other order, the two would deadlock
            row = await _limit(tx, namespace, name, tx.lock_rows)
            # the buckets go with it (a foreign key's cascade, said here for SQLite too)
            await tx.execute(
                "DELETE FROM rate_limit_buckets WHERE namespace = $1 AND name = $2",
                namespace,
                name,
            )
            await tx.execute(
                "DELETE FROM rate_limits WHERE namespace = $1 AND name = $2", namespace, name
            )
            return _info(row)

        return await self._db.write(remove)

    async def acquire(
        self, namespace: str, name: str, units: int, key: str, request_id: str | None
    ) -> Grant:
        """`acquire_in` in a transaction of its own."""

        async def take(tx: Tx) -> Grant:
            return await acquire_in(
                tx, namespace, name, units, key, self._clock, request_id=request_id
            )

        return await self._db.write(take)
