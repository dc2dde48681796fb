"""SQLite: one embedded file in WAL mode.

One connection writes, inside an anyio lock: statements run on the event loop (they
take microseconds). Concurrent transactions are grouped under one COMMIT (see
`transaction`), which waits for the disk in a thread while the loop gathers the next
group; a transaction alone in its group commits on the loop, since the hop to a
thread and back costs more than a fast disk's fsync (measured: 10-task runs went
from about 17 to 14 ms at p50). A second
connection serves reads, which WAL lets proceed beside the writer. One server
process owns the file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sqlite3
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from aiki_server._storage._database import Database, Row, Tx
from aiki_server._storage._outage import is_outage, unavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from aiki_server._notify import WakeHub

_PARAM = re.compile(r"\$(\d+)")
_SCANNERS = 4
"""Off-loop reads at a time (each on its own connection); more wait for one to end."""


@functools.lru_cache(maxsize=1024)
def _to_sqlite(sql: str) -> str:
    # statements are a small fixed set of strings: rewrite each one once
    return _PARAM.sub(r"?\1", sql)


class SqliteTx(Tx):
    """A transaction on the SQLite connection."""

    lock_rows = ""  # the single writer holds the database lock for the whole transaction
    skip_locked = ""
    keep_rows = ""
    unindexed = "+"  # a unary plus: the column's value, never its index
    writable_ctes = False

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__()
        self._conn = conn

    def in_array(self, param: int) -> str:
        """`IN (SELECT value FROM json_each(?n))`: one JSON array parameter."""
        return f"IN (SELECT value FROM json_each(${param}))"

    def array(self, values: Sequence[str]) -> Any:
        """The values as a JSON array text, which `json_each` reads."""
        return json.dumps(list(values))

    async def lock_key(self, key: str) -> None:
        """Nothing to lock: SQLite has one writer at a time."""

    async def try_lock_key(self, key: str) -> bool:
        """Nothing to lock: SQLite has one writer at a time."""
        return True

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

    @asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[None]:
        self._conn.execute("SAVEPOINT unit")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK TO unit")
            raise
        finally:
            self._conn.execute("RELEASE unit")


class _ThreadedSqliteTx(SqliteTx):
    """A read session whose statements run in a worker thread, off the event loop."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Rows of a query, read in a worker thread."""
        return await anyio.to_thread.run_sync(self._fetch, _to_sqlite(sql), args)

    def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Row]:
        cursor = self._conn.execute(sql, args)
        names = [column[0] for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    async def execute(self, sql: str, *args: Any) -> int:
        """Not for a read session."""
        raise TypeError("a read session does not write")

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        """Not for a read session."""
        raise TypeError("a read session does not write")


class _Group:
    """Transactions sharing one SQLite transaction and its COMMIT."""

    def __init__(self, changes: int) -> None:
        self.committed = anyio.Event()
        self.error: BaseException | None = None
        """Why the group failed: every member raises it. Set before the COMMIT when the
        group's transaction is already gone (`SqliteDatabase._break`)."""
        self.topics: set[str] = set()
        self.size = 0
        self.changes = changes
        """The connection's `total_changes` at BEGIN: more at COMMIT means a real write."""


class SqliteDatabase(Database):
    """The embedded default: a SQLite file with WAL and full fsync on commit."""

    dialect = "sqlite"

    def __init__(self, path: Path, hub: WakeHub) -> None:
        super().__init__(hub)
        self.path = path
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = anyio.Lock()
        self._group: _Group | None = None
        self._scanners: list[sqlite3.Connection] = []
        """Idle connections of the off-loop readers (`reader(off_loop=True)`)."""
        self._scanning = anyio.Semaphore(_SCANNERS)

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

    async def maintain(self) -> None:
        """Nothing to keep: both connections are to a local file."""

    async def close(self) -> None:
        """Close both connections."""
        async with self._lock:
            for conn in (self._writer, self._reader, *self._scanners):
                if conn is not None:
                    conn.close()
            self._writer = self._reader = None
            self._scanners.clear()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTx]:
        """A write transaction, committed durably on exit, with its neighbours (group commit).

        Transactions that arrive while another is open or committing join one SQLite
        transaction, each inside its own SAVEPOINT: a failing one rolls back alone, and
        the whole group shares one COMMIT, so concurrent writes pay for one fsync.

        Whatever raises, and wherever, the lock is released and the connection is left
        either in the group's live transaction or in none. After some errors (a full
        disk, an I/O error) SQLite rolls back the whole transaction by itself: the
        group is then lost, and every member fails with the error.
        """
        assert self._writer is not None, "database is not open"
        conn = self._writer
        await self._lock.acquire()
        group: _Group | None = None
        try:
            group = self._group
            leader = group is None
            if group is None:
                _end_dead_transaction(conn)
                conn.execute("BEGIN IMMEDIATE")
                group = self._group = _Group(conn.total_changes)
            group.size += 1
            conn.execute("SAVEPOINT tx")
        except BaseException as exc:
            if group is None:
                self.write_path.failed(exc)
            else:  # the members before this one lose their work too
                self._break(group, exc)
            self._lock.release()
            raise
        tx = SqliteTx(conn)
        failure: BaseException | None = None
        try:
            yield tx
        except BaseException as exc:
            failure = exc
            self.write_path.failed(exc)
        try:
            self._end_savepoint(conn, group, failure)
        finally:
            self._lock.release()
        if failure is None:
            group.topics |= tx.topics
        if leader:
            # no caller may leave a group uncommitted, even when cancelled
            with anyio.CancelScope(shield=True):
                await self._commit(group)
        else:
            await group.committed.wait()
        if failure is not None:
            raise failure
        if group.error is not None:
            raise group.error

    def _end_savepoint(
        self, conn: sqlite3.Connection, group: _Group, failure: BaseException | None
    ) -> None:
        """Roll back (on `failure`) and release this member's savepoint; break the group if lost."""
        try:
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back by itself: the savepoint is gone
                raise sqlite3.OperationalError("the transaction was rolled back by SQLite")
            if failure is not None:
                conn.execute("ROLLBACK TO tx")
            conn.execute("RELEASE tx")
        except sqlite3.Error as exc:
            self._break(group, failure or exc)

    def _break(self, group: _Group, cause: BaseException) -> None:
        """Give up `group`: its transaction is (or is made) gone; every member gets an error."""
        self.write_path.failed(cause)
        if group.error is None:
            lost = (
                unavailable(cause)
                if is_outage(cause)
                else sqlite3.OperationalError(
                    f"the transaction was rolled back with its group: {cause}"
                )
            )
            lost.__cause__ = cause
            group.error = lost
        if self._group is group:
            self._group = None  # later transactions start a group of their own
        with contextlib.suppress(sqlite3.Error):  # the next BEGIN tries again
            _end_dead_transaction(self._writer)

    async def _commit(self, group: _Group) -> None:
        await anyio.lowlevel.checkpoint()  # let the transactions already waiting join this group
        assert self._writer is not None
        conn = self._writer
        async with self._lock:
            if self._group is group:
                self._group = None
            if group.error is None:  # a broken group's transaction is already gone
                try:
                    if group.size == 1:
                        # nobody to overlap with: a thread hop would cost more than the fsync
                        conn.execute("COMMIT")
                    else:
                        # the fsync is the only slow part; the loop serves the next group meanwhile
                        await anyio.to_thread.run_sync(conn.execute, "COMMIT")
                except BaseException as exc:
                    group.error = exc
                    self.write_path.failed(exc)
                    with contextlib.suppress(sqlite3.Error):  # the next BEGIN tries again
                        _end_dead_transaction(conn)
                else:
                    if conn.total_changes > group.changes:
                        self.write_path.succeeded()
        group.committed.set()
        if group.error is None:
            self._deliver(group.topics)

    @asynccontextmanager
    async def reader(self, *, off_loop: bool = False) -> AsyncIterator[SqliteTx]:
        """A read session on committed data.

        On the reader connection, on the event loop: an index lookup takes microseconds,
        less than a hop to a thread. `off_loop`, for a read that may walk many rows (a
        listing, a count): on a connection of its own (one of `_SCANNERS`), each
        statement in a worker thread, so the loop serves everyone else meanwhile.
        """
        assert self._reader is not None, "database is not open"
        if not off_loop:
            yield SqliteTx(self._reader)
            return
        async with self._scanning:
            if self._scanners:
                conn = self._scanners.pop()
            else:
                conn = await anyio.to_thread.run_sync(self._connect)
            try:
                yield _ThreadedSqliteTx(conn)
            finally:
                if self._writer is None:  # closed meanwhile
                    conn.close()
                else:
                    self._scanners.append(conn)

    async def _lock_migrations(self, tx: Tx) -> None:
        """Nothing more: the write transaction (BEGIN IMMEDIATE) already lets one in."""

    async def _run_script(self, tx: Tx, sql: str) -> None:
        # executescript would COMMIT the open transaction; run statement by statement
        for statement in sql.split(";"):
            if statement.strip() and not _only_comments(statement):
                await tx.execute(statement)


def _end_dead_transaction(conn: sqlite3.Connection | None) -> None:
    """Roll back what a failed transaction left open on `conn`, if anything."""
    if conn is not None and conn.in_transaction:
        conn.execute("ROLLBACK")


def _only_comments(statement: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in statement.splitlines())
