"""PostgreSQL through an asyncpg pool.

Rows a transaction changes are locked with `FOR UPDATE`; claims and the timer daemon
take theirs with `FOR NO KEY UPDATE SKIP LOCKED`, so several server replicas can share one
database. Wake-ups cross replicas as NOTIFY on one channel, which a dedicated
connection LISTENs to and feeds into the local `WakeHub`; each replica wakes its own
waiters directly and skips the echo of its own NOTIFYs. When that connection is lost
(PostgreSQL restarted, say), `maintain` logs it and connects again, with a doubling
back-off, for as long as the server runs; once it listens again it wakes every local
waiter, since NOTIFYs sent meanwhile are lost.

Transactions leave no session state on their connection (no SET, LISTEN or advisory
lock), so a connection goes back to the pool without asyncpg's reset query: one
round trip less per transaction.
"""

from __future__ import annotations

import os
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg

from aiki_server._logs import component
from aiki_server._storage._database import Database, Row, Tx

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from asyncpg.pool import PoolConnectionProxy

    from aiki_server._notify import WakeHub

    # asyncpg's classes are generic only in its stubs, so this alias exists only there
    _Connection = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

CHANNEL = "aiki_wake"
LISTEN_CHECK_INTERVAL = 10.0
"""Seconds between checks that the LISTEN connection still answers (a silent network
loss closes no socket)."""
RECONNECT_BACKOFF = (0.1, 5.0)
"""Seconds before the first attempt to connect the LISTEN connection again, and at most."""

_log = component("postgres")


async def _keep_session(_conn: _Connection) -> None:
    """Nothing to reset: see the module's docstring."""


class PostgresTx(Tx):
    """A transaction on one pooled connection."""

    lock_rows = " FOR UPDATE"
    # NO KEY UPDATE: a row another transaction only references (a child's wait, an
    # event's foreign key take KEY SHARE locks) is not skipped: a claim that skipped a
    # queued run for that would wait for the next wake-up, which may never come
    skip_locked = " FOR NO KEY UPDATE SKIP LOCKED"
    keep_rows = " FOR KEY SHARE"
    unindexed = ""  # the planner weighs indexes by the table's statistics
    writable_ctes = True

    def __init__(self, conn: _Connection) -> None:
        super().__init__()
        self._conn = conn

    def in_array(self, param: int) -> str:
        """`= ANY($n::text[])`: one array parameter."""
        return f"= ANY(${param}::text[])"

    def array(self, values: Sequence[str]) -> Any:
        """A list, which asyncpg sends as a PostgreSQL array."""
        return list(values)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Rows of a query."""
        return [dict(record) for record in await self._conn.fetch(sql, *args)]

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; the number of rows it changed."""
        status: str = await self._conn.execute(sql, *args)
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per parameter tuple."""
        await self._conn.executemany(sql, args)

    async def lock_key(self, key: str) -> None:
        """A transaction-scoped advisory lock on a 64-bit hash of `key`."""
        await self._conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)

    async def try_lock_key(self, key: str) -> bool:
        """`lock_key` without waiting: false if another transaction holds it."""
        taken: bool = await self._conn.fetchval(
            "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", key
        )
        return taken

    @asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[None]:
        async with self._conn.transaction():  # nested in the open one: a SAVEPOINT
            yield


class PostgresDatabase(Database):
    """A PostgreSQL database; `url` may carry `?search_path=...` for a schema."""

    dialect = "postgresql"
    # two transactions racing for the same unique key or locking in opposite orders:
    # running the loser again sees the winner's committed row
    transient_errors = (
        asyncpg.UniqueViolationError,
        asyncpg.DeadlockDetectedError,
        asyncpg.SerializationError,
    )

    def __init__(self, url: str, hub: WakeHub, *, pool_size: int = 10) -> None:
        super().__init__(hub)
        self.url = url
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._origin = os.urandom(6).hex()
        """Prefixes this replica's NOTIFY payloads, to tell its own echoes."""

    async def open(self) -> None:
        """Open the pool and the LISTEN connection."""
        self._pool = await asyncpg.create_pool(
            self.url, min_size=2, max_size=self._pool_size, reset=_keep_session
        )
        self._listener = await self._listen()

    async def _listen(self) -> asyncpg.Connection:
        listener = await asyncpg.connect(self.url)
        try:
            await listener.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            listener.terminate()
            raise
        return listener

    async def maintain(self) -> None:
        """Keep the LISTEN connection up: connect again whenever it is lost, until cancelled."""
        while True:
            assert self._listener is not None, "database is not open"
            await _until_lost(self._listener)
            await self._listen_again()

    async def _listen_again(self) -> None:
        _log.warn("the LISTEN connection to PostgreSQL was lost; connecting again")
        lost_at = time.monotonic()
        delay, longest = RECONNECT_BACKOFF
        attempts = 0
        while True:
            attempts += 1
            try:
                self._listener = await self._listen()
                break
            except Exception as exc:  # whatever it is, the server goes on and tries again
                report = _log.warn if attempts == 1 else _log.debug
                report("connecting the LISTEN connection failed", {"error": repr(exc)})
                await anyio.sleep(delay)
                delay = min(delay * 2, longest)
        _log.info(
            "the LISTEN connection to PostgreSQL is back; waking every waiter",
            {"attempts": attempts, "down_seconds": round(time.monotonic() - lost_at, 3)},
        )
        self.hub.publish_all()  # what was NOTIFYed meanwhile is lost: every waiter looks again

    async def close(self) -> None:
        """Close the LISTEN connection and the pool."""
        if self._listener is not None:
            if not self._listener.is_closed():
                await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _on_notify(self, _conn: _Connection, _pid: int, _channel: str, payload: object) -> None:
        origin, _, topic = str(payload).partition(":")
        if origin != self._origin:  # this replica woke its own waiters at commit
            self.hub.publish(topic)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTx]:
        """A read-committed transaction; NOTIFYs its topics as part of the commit."""
        assert self._pool is not None, "database is not open"
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                tx = PostgresTx(conn)
                yield tx
                if tx.topics:
                    await conn.execute(
                        "SELECT pg_notify($1, $2 || ':' || topic) FROM unnest($3::text[]) AS topic",
                        CHANNEL,
                        self._origin,
                        sorted(tx.topics),
                    )
        except Exception as exc:
            self.write_path.failed(exc)
            raise
        self.write_path.succeeded()
        self._deliver(tx.topics)

    @asynccontextmanager
    async def reader(self, *, off_loop: bool = False) -> AsyncIterator[PostgresTx]:
        """A session on one pooled connection, outside any explicit transaction.

        Every read is off the event loop already (`off_loop` is for SQLite).
        """
        assert self._pool is not None, "database is not open"
        async with self._pool.acquire() as conn:
            yield PostgresTx(conn)

    async def _lock_migrations(self, tx: Tx) -> None:
        # a lock per schema: replicas starting together on one new schema would otherwise
        # both create `schema_migrations` and its row type, and one would fail
        await tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('aiki-migrations:' || current_schema()))"
        )

    async def _run_script(self, tx: Tx, sql: str) -> None:
        # a simple-query-protocol execute runs a whole script
        await tx.execute(sql)


async def _until_lost(listener: asyncpg.Connection) -> None:
    """Return once `listener` is closed, or has stopped answering (then closed here)."""
    lost = anyio.Event()
    listener.add_termination_listener(lambda _conn: lost.set())
    if listener.is_closed():  # lost before the callback was in place
        return
    while not lost.is_set():
        with anyio.move_on_after(LISTEN_CHECK_INTERVAL):
            await lost.wait()
        if not lost.is_set() and not await _answers(listener):
            listener.terminate()
            return


async def _answers(listener: asyncpg.Connection) -> bool:
    """Whether `listener` answers a query within a few seconds."""
    with anyio.move_on_after(5.0):
        try:
            await listener.execute("SELECT 1")
        except Exception:  # any failure: a fresh connection is the cure
            return False
        return True
    return False
