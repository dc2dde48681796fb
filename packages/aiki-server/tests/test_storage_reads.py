"""Reads that may walk many rows (`reader(off_loop=True)`) leave the event loop free.

On SQLite such a read runs in a worker thread on a connection of its own; on
PostgreSQL every read awaits the pool's connection. Either way, other tasks run while
it reads, and it sees what was committed.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel

from aiki_server._notify import WakeHub
from aiki_server._storage._open import open_database

# a read that takes a while: counting a long recursive sequence
_SLOW = (
    "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 200000)"
    " SELECT COUNT(*) AS n FROM s"
)


async def test_an_off_loop_read_lets_other_tasks_run_while_it_reads(db_url: str) -> None:
    db = open_database(db_url, WakeHub())
    await db.open()
    try:
        reading = True
        ticks_while_reading = 0

        async def ticker() -> None:
            nonlocal ticks_while_reading
            while reading:
                ticks_while_reading += 1
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await anyio.lowlevel.checkpoint()  # the ticker has started
            ticks_while_reading = 0
            async with db.reader(off_loop=True) as tx:
                row = await tx.fetchrow(_SLOW)
            reading = False
        assert row is not None and int(row["n"]) == 200_000
        assert ticks_while_reading > 0
    finally:
        await db.close()


async def test_off_loop_reads_at_once_each_see_committed_rows(db_url: str) -> None:
    """More reads than the SQLite pool's connections: each waits its turn, all answer."""
    db = open_database(db_url, WakeHub())
    await db.open()
    try:
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE off_loop_probe (v INTEGER)")
            await tx.execute("INSERT INTO off_loop_probe (v) VALUES (1), (2), (3)")
        sums: list[int] = []

        async def read() -> None:
            async with db.reader(off_loop=True) as tx:
                row = await tx.fetchrow("SELECT SUM(v) AS s FROM off_loop_probe")
            assert row is not None
            sums.append(int(row["s"]))

        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(read)
        assert sums == [6] * 12
    finally:
        await db.close()
