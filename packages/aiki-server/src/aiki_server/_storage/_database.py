"""The database interface the server is written against.

SQL is written once, with `$1`-style parameters (PostgreSQL's); the SQLite
implementation rewrites them to `?1`. The few dialect differences are fragments on
the transaction (`lock_rows`, `skip_locked`, `keep_rows`, `in_array`). No statement takes one
parameter per row: a list of ids is one parameter (`Tx.array`), matched with
`in_array`, however long the list.

Topics noted with `Tx.publish` are delivered only after the transaction commits:
in process through the `WakeHub`, and to other replicas through NOTIFY.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from importlib import resources
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from aiki_server._flow_settings import FlowSettings, LimitedWorkflows
from aiki_server._metrics import Metrics
from aiki_server._storage._outage import WritePath, is_outage

if TYPE_CHECKING:
    from aiki_server._notify import WakeHub

Row = Mapping[str, Any]
T = TypeVar("T")


class Tx(ABC):
    """One transaction (or one read-only session)."""

    lock_rows: str
    """Appended to a SELECT to lock the rows it returns until commit."""
    skip_locked: str
    """Appended to a SELECT to lock its rows and skip rows another transaction holds."""
    flow: FlowSettings = FlowSettings()
    """How runs queued in this transaction are ranked (the database's, in `write`)."""
    limited: LimitedWorkflows = LimitedWorkflows()
    """The replica's view of the workflows with a concurrency limit (the database's)."""
    cleanup_ms: int = 60_000
    """How long a cancelled or timed-out run's cleanup may take (the database's)."""
    unindexed: str
    """Put before a column in a condition that must not choose an index: SQLite's planner,
    without statistics, prefers any index whose first column a condition fixes (say the
    namespace's, for runs), however many rows share the value."""
    keep_rows: str
    """Appended to a SELECT to keep its rows from being deleted (or their keys changed)
    until commit, letting other transactions read, keep and update them meanwhile."""
    writable_ctes: bool
    """Whether a statement's `WITH` may insert or update (PostgreSQL): several writes that
    depend on each other then go in one round trip."""

    def __init__(self) -> None:
        self.topics: set[str] = set()
        self.effects: list[Callable[[Metrics], None]] = []

    def observe(self, effect: Callable[[Metrics], None]) -> None:
        """Count `effect` in the metrics once this transaction has committed (`write`)."""
        self.effects.append(effect)

    @abstractmethod
    def in_array(self, param: int) -> str:
        """`column {tx.in_array(2)}`: the column equals one of the texts bound at `$2`.

        Bind `tx.array(values)` there: one parameter, however many values.
        """

    @abstractmethod
    def array(self, values: Sequence[str]) -> Any:
        """`values` as the single parameter an `in_array` fragment reads."""

    def publish(self, *topics: str) -> None:
        """Wake the topics' waiters once this transaction has committed."""
        self.topics.update(topics)

    @abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Rows of a query."""

    @abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; the number of rows it changed."""

    @abstractmethod
    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per parameter tuple."""

    @abstractmethod
    async def lock_key(self, key: str) -> None:
        """Hold a lock on `key` until the transaction ends (writers of one key queue)."""

    @abstractmethod
    async def try_lock_key(self, key: str) -> bool:
        """`lock_key` if no other transaction holds it now; whether it was taken."""

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """The first row of a query, or `None`."""
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A unit of work inside this transaction: an error undoes its writes alone.

        The error goes on up; the caller may catch it and go on with the transaction
        (the timer daemon isolates each due row this way, in one batch transaction).
        """
        topics, effects = set(self.topics), len(self.effects)
        try:
            async with self._savepoint():
                yield
        except BaseException:
            self.topics = topics  # nothing it wrote is there to wake anyone about
            del self.effects[effects:]  # nor to count
            raise

    @abstractmethod
    def _savepoint(self) -> AbstractAsyncContextManager[None]:
        """The dialect's savepoint: released on success, rolled back to on an error."""


class Database(ABC):
    """A connection (pool) to one database, with its migrations."""

    dialect: str
    transient_errors: tuple[type[BaseException], ...] = ()
    """Errors after which the whole transaction may simply be run again."""

    def __init__(self, hub: WakeHub) -> None:
        self.hub = hub
        self.write_path = WritePath()
        """Whether writes succeed; `/health` reports it."""
        self.metrics = Metrics()
        """Where `write` counts transactions and what they did (the app sets its own)."""
        self.flow = FlowSettings()
        """How runs queued in its write transactions are ranked (the app sets its own)."""
        self.limited = LimitedWorkflows()
        """Its view of the workflows with a concurrency limit (a wake-up hint)."""
        self.cleanup_ms = 60_000
        """How long a cancelled or timed-out run's cleanup may take (the app sets its own)."""

    async def write(self, work: Callable[[Tx], Awaitable[T]], *, attempts: int = 5) -> T:
        """`work` in a write transaction: its answer, once the transaction has committed.

        After a transient error (`transient_errors`, at commit too) the transaction is
        rolled back and `work` runs again in a new one, up to `attempts` times in all,
        with a doubling pause in between: every write of the server is retried here,
        and nowhere else. `work` may thus run more than once; it must change nothing
        but through its `Tx`. What it noted with `Tx.observe` is counted after the
        commit, once.
        """
        metrics = self.metrics
        for attempt in range(1, attempts + 1):
            started = perf_counter()
            try:
                async with self.transaction() as tx:
                    tx.flow = self.flow
                    tx.limited = self.limited
                    tx.cleanup_ms = self.cleanup_ms
                    answer = await work(tx)
            except self.transient_errors:
                metrics.transaction(perf_counter() - started)
                if attempt == attempts:
                    metrics.transaction_failed()
                    raise
                metrics.transaction_retried()
                await anyio.sleep(0.002 * 2**attempt)
                continue
            except Exception as exc:
                metrics.transaction(perf_counter() - started)
                if is_outage(exc):
                    metrics.transaction_failed()
                raise
            metrics.transaction(perf_counter() - started)
            for effect in tx.effects:
                effect(metrics)
            return answer
        raise AssertionError("unreachable")

    @abstractmethod
    async def open(self) -> None:
        """Connect."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect."""

    @abstractmethod
    async def maintain(self) -> None:
        """Keep the database's background connections alive while the server runs.

        Run it in the server's task group; it returns when there is nothing to keep.
        """

    @abstractmethod
    def transaction(self) -> Any:
        """`async with db.transaction() as tx`: a read-write transaction, tried once.

        The server's writes use `write`, which runs a transaction again after a
        transient error; this is the single attempt beneath it (and the migrations').
        """

    @abstractmethod
    def reader(self, *, off_loop: bool = False) -> Any:
        """`async with db.reader() as tx`: a read-only session on committed data.

        `off_loop=True` for a read that may walk many rows (a listing, a count, the
        timer daemon's looks): its statements never run on the event loop.
        """

    def _deliver(self, topics: set[str]) -> None:
        for topic in topics:
            self.hub.publish(topic)

    async def migrate(self) -> list[int]:
        """Apply the pending migrations of this dialect, in order; the versions applied."""
        applied: list[int] = []
        async with self.transaction() as tx:
            await self._lock_migrations(tx)
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            rows = await tx.fetch("SELECT version FROM schema_migrations")
            done = {row["version"] for row in rows}
            for version, sql in _migrations(self.dialect):
                if version in done:
                    continue
                await self._run_script(tx, sql)
                await tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                    version,
                    _utc_now_text(),
                )
                applied.append(version)
        return applied

    @abstractmethod
    async def _lock_migrations(self, tx: Tx) -> None:
        """Hold, until `tx` ends, the lock that lets one migrating replica at a time in."""

    @abstractmethod
    async def _run_script(self, tx: Tx, sql: str) -> None:
        """Run a multi-statement migration script inside `tx`."""


def _migrations(dialect: str) -> list[tuple[int, str]]:
    folder = resources.files("aiki_server._storage") / "migrations" / dialect
    scripts = sorted(
        (int(entry.name.split("_", 1)[0]), entry.read_text())
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )
    return scripts


def _utc_now_text() -> str:
    return datetime.now(UTC).isoformat()
