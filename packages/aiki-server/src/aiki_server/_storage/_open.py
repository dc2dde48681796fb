"""Choose the database implementation from a URL."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from aiki_core import InvalidRequestError
from aiki_server._storage._postgres import PostgresDatabase
from aiki_server._storage._sqlite import SqliteDatabase

if TYPE_CHECKING:
    from aiki_server._notify import WakeHub
    from aiki_server._storage._database import Database


def open_database(url: str, hub: WakeHub) -> Database:
    """`sqlite:///path/to.db`, a plain file path, or `postgresql://user@host/db`."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, hub)
    if url.startswith("sqlite:///"):
        return SqliteDatabase(Path(url.removeprefix("sqlite:///")), hub)
    if "://" in url:
        raise InvalidRequestError(
            f"unsupported database URL {url!r}: use sqlite:/// or postgresql://"
        )
    return SqliteDatabase(Path(url), hub)
