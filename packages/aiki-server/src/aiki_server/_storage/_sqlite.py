"""SQLite: one embedded file in WAL mode.

One connection writes, inside an anyio lock: statements run on the event loop (they
take microseconds), and only COMMIT, which waits for the disk, runs in a thread. A
second connection serves reads, which WAL lets proceed beside the writer. One
server process owns the file.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from aiki_server._storage._database import Database, Row, Tx

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from aiki_server._notify import WakeHub

_PARAM = re.compile(r"\$(\d+)")


def _to_sqlite(sql: str) -> str:
    return _PARAM.sub(r"?\1", sql)


class SqliteTx(Tx):
    """A transaction on the SQLite connection."""

    lock_rows = ""  # the single writer holds the database lock for the whole transaction
    skip_locked = ""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__()
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Rows of a query."""
        cursor = self._conn.execute(_to_sqlite(sql), args)
        names = [column[0] for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; the number of rows it changed."""
        return self._conn.execute(_to_sqlite(sql), args).rowcount

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per parameter tuple."""
        self._conn.executemany(_to_sqlite(sql), args)


class SqliteDatabase(Database):
    """The embedded default: a SQLite file with WAL and full fsync on commit."""

    dialect = "sqlite"

    def __init__(self, path: Path, hub: WakeHub) -> None:
        super().__init__(hub)
        self.path = path
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = anyio.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the server answers, as a durable engine owes
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    async def open(self) -> None:
        """Open the file (creating it) with a writer and a reader connection."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = self._connect()
        self._reader = self._connect()

    async def close(self) -> None:
        """Close both connections."""
        async with self._lock:
            for conn in (self._writer, self._reader):
                if conn is not None:
                    conn.close()
            self._writer = self._reader = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTx]:
        """A write transaction; committed (durably) on exit, rolled back on error."""
        assert self._writer is not None, "database is not open"
        conn = self._writer
        async with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            tx = SqliteTx(conn)
            try:
                yield tx
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            # the fsync is the only slow part; keep it off the event loop
            await anyio.to_thread.run_sync(conn.execute, "COMMIT")
        self._deliver(tx.topics)

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[SqliteTx]:
        """A read session on the reader connection (sees committed data only)."""
        assert self._reader is not None, "database is not open"
        yield SqliteTx(self._reader)

    async def _run_script(self, tx: Tx, sql: str) -> None:
        # executescript would COMMIT the open transaction; run statement by statement
        for statement in sql.split(";"):
            if statement.strip() and not _only_comments(statement):
                await tx.execute(statement)


def _only_comments(statement: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in statement.splitlines())
