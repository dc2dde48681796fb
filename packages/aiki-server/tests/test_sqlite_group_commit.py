"""SQLite group commit: concurrent transactions share one COMMIT, and fail alone."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import anyio
import pytest

from aiki_server._notify import WakeHub
from aiki_server._storage._sqlite import SqliteDatabase

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
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
