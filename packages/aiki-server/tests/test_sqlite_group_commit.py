"""SQLite group commit: concurrent transactions share one COMMIT, and fail alone.

A full disk fails whole groups (SQLite may roll the transaction back by itself), at a
statement or at COMMIT: every member gets the error, no write is left hanging, and
writes succeed again once there is space.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from typing import TYPE_CHECKING

import anyio
import pytest

from aiki_core import StorageUnavailableError
from aiki_server._notify import WakeHub
from aiki_server._storage._outage import is_outage
from aiki_server._storage._sqlite import SqliteDatabase

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(tmp_path / "g.db", WakeHub())
    await database.open()
    async with database.transaction() as tx:
        await tx.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    yield database
    await database.close()


class Boom(Exception):
    pass


async def test_concurrent_transactions_share_commits_and_fail_alone(db: SqliteDatabase) -> None:
    commits: list[int] = []
    assert db._writer is not None
    db._writer.set_trace_callback(
        lambda sql: commits.append(threading.get_ident()) if sql == "COMMIT" else None
    )
    failures: list[BaseException] = []

    async def write(i: int) -> None:
        try:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t (id, v) VALUES ($1, $2)", i, f"v{i}")
                if i % 10 == 3:
                    raise Boom(i)
                tx.publish(f"topic-{i}")
        except Boom as exc:
            failures.append(exc)

    subscriptions = {i: db.hub.subscribe(f"topic-{i}") for i in range(50)}
    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(write, i)

    async with db.reader() as tx:
        rows = await tx.fetch("SELECT id FROM t ORDER BY id")
    written = {row["id"] for row in rows}
    assert written == {i for i in range(50) if i % 10 != 3}
    assert sorted(int(str(f)) for f in failures) == [3, 13, 23, 33, 43]
    assert 1 <= len(commits) < 50  # grouped: far fewer fsyncs than transactions
    # a group's COMMIT waits for the disk in a worker thread, off the event loop
    assert threading.get_ident() not in commits
    # topics of committed transactions are delivered, those of failed ones are not
    for i, subscription in subscriptions.items():
        assert await subscription.wait(0) is (i % 10 != 3)


async def test_a_lone_transaction_commits_and_a_failed_one_leaves_nothing(
    db: SqliteDatabase,
) -> None:
    committers: list[int] = []
    assert db._writer is not None
    db._writer.set_trace_callback(
        lambda sql: committers.append(threading.get_ident()) if sql == "COMMIT" else None
    )
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO t (id, v) VALUES (1, 'a')")
    # alone in its group, it committed on the event loop's thread, not in a worker thread
    assert committers == [threading.get_ident()]
    with pytest.raises(Boom):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (id, v) VALUES (2, 'b')")
            raise Boom(2)
    async with db.reader() as tx:
        assert [r["id"] for r in await tx.fetch("SELECT id FROM t")] == [1]


# -- a full disk ---------------------------------------------------------------------------


def outage_error(exc: BaseException) -> bool:
    """Whether `exc` is what a write gets while the disk is full: the 503 kind."""
    return isinstance(exc, StorageUnavailableError) or is_outage(exc)


def failing(db: SqliteDatabase) -> str:
    """Why writes fail, as `/health` would say; empty while they succeed."""
    failure = db.write_path.failure
    return "" if failure is None else failure.error


async def group_of_writes(db: SqliteDatabase, count: int, size: int) -> list[BaseException]:
    """`count` concurrent transactions (one group), each writing `size` bytes; their errors."""
    failures: list[BaseException] = []

    async def write(i: int) -> None:
        try:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t (id, v) VALUES ($1, zeroblob($2))", 1000 + i, size)
        except Exception as exc:
            failures.append(exc)

    with anyio.fail_after(20):  # before the fix, a lost group left the write lock held forever
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(write, i)
    return failures


async def test_a_full_database_fails_its_writes_fast_and_they_recover(db: SqliteDatabase) -> None:
    conn = db._writer
    assert conn is not None
    async with db.transaction() as tx:  # a free page or two for SQLite's own bookkeeping
        await tx.execute("INSERT INTO t (id, v) VALUES (1, 'a')")
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")

    for _ in range(3):  # the lock is free after each failed group: no write hangs
        failures = await group_of_writes(db, 8, 20_000)
        assert len(failures) == 8
        assert all(outage_error(exc) for exc in failures), failures
        assert "full" in failing(db)

    conn.execute("PRAGMA max_page_count = 1073741823")  # space is back
    assert await group_of_writes(db, 8, 20_000) == []
    assert failing(db) == ""
    async with db.reader() as tx:
        assert len(await tx.fetch("SELECT id FROM t")) == 9


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a file system that really fills (mounting needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


async def test_a_group_whose_commit_hits_a_full_disk_fails_together_and_recovers(
    small_disk: Path,
) -> None:
    db = SqliteDatabase(small_disk / "g.db", WakeHub())
    await db.open()
    try:
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        # leave about 100 KB free: the group's pages reach the disk only at COMMIT (WAL)
        free = shutil.disk_usage(small_disk).free
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * (free - 100_000))

        commits: list[str] = []
        assert db._writer is not None
        db._writer.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        for _ in range(2):
            failures = await group_of_writes(db, 8, 40_000)
            assert len(failures) == 8  # every member shared the failed COMMIT
            assert all(outage_error(exc) for exc in failures), failures
        assert commits  # they failed at COMMIT, not before
        assert failing(db)

        filler.unlink()  # space is back
        assert await group_of_writes(db, 8, 40_000) == []
        assert failing(db) == ""
        async with db.reader() as tx:
            assert len(await tx.fetch("SELECT id FROM t")) == 8
    finally:
        await db.close()
