"""Which errors mean the database is out of service, rather than a bug or bad input.

An outage (PostgreSQL down or restarting, a dropped connection, SQLite out of disk or
failing I/O) is no fault of the request: the server answers it with a
`StorageUnavailableError` (503, `Retry-After`), and `WritePath` remembers that writes
fail, for `/health`, until one succeeds again.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from aiki_core import StorageUnavailableError
from aiki_server._logs import component

RETRY_AFTER_SECONDS = 2
"""What a 503 of an outage asks the caller to wait before trying again."""

_log = component("storage")

# primary result codes (the low byte of an extended one) of a database that cannot serve
# for now: locked by another process, out of memory, made read-only, failing or full disk
_SQLITE_OUTAGES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOLFS,
    }
)
_POSTGRES_OUTAGES: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,  # SQLSTATE 08: the connection failed or is gone
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutting down, starting up, cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # 53: disk full, too many connections
    asyncpg.InterfaceError,  # the client's side: connection closed, pool closing
    # a pooled connection whose backend was just terminated, used before its socket closed
    asyncpg.exceptions.InternalClientError,
    OSError,  # connecting failed: refused, unreachable, timed out, reset
)


OUTAGE_TYPES: tuple[type[Exception], ...] = (sqlite3.Error, *_POSTGRES_OUTAGES)
"""Every class of exception an outage is raised as (some of them are not always one)."""


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot serve for now (trying later may succeed)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _SQLITE_OUTAGES
    return isinstance(exc, _POSTGRES_OUTAGES)


def unavailable(exc: BaseException) -> StorageUnavailableError:
    """The error a client gets for an outage (naming no host, path or internals)."""
    # SQLite's messages are generic ("database or disk is full"); connection errors
    # name hosts and ports, which the client has no business seeing
    reason = str(exc) if isinstance(exc, sqlite3.Error) else "unreachable or restarting"
    return StorageUnavailableError(
        f"the database cannot serve requests for now ({reason});"
        f" try again in {RETRY_AFTER_SECONDS} s",
        retry_after=RETRY_AFTER_SECONDS,
    )


@dataclass(frozen=True, slots=True)
class WriteFailure:
    """Writes have failed since `since`; `error` is the latest failure."""

    since: datetime
    error: str


class WritePath:
    """Whether writes succeed: failing from an outage until a write commits again."""

    def __init__(self) -> None:
        self.failure: WriteFailure | None = None

    def failed(self, exc: BaseException) -> None:
        """A write failed: remember it if `exc` is an outage."""
        if not is_outage(exc):
            return
        error = f"{type(exc).__name__}: {exc}"
        if self.failure is None:
            _log.error("database writes are failing", {"error": error})
            self.failure = WriteFailure(datetime.now(UTC), error)
        else:
            self.failure = WriteFailure(self.failure.since, error)

    def succeeded(self) -> None:
        """A write committed: the write path works (again)."""
        if self.failure is not None:
            _log.info(
                "database writes succeed again",
                {"failing_since": self.failure.since.isoformat(), "error": self.failure.error},
            )
            self.failure = None
