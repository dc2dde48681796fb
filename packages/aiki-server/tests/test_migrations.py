"""Migrations: replicas migrating one new database at the same time all succeed."""

from __future__ import annotations

import sys

import anyio

from aiki_server._notify import WakeHub
from aiki_server._storage._database import _migrations
from aiki_server._storage._open import open_database

REPLICAS = 4


async def test_replicas_migrating_one_new_database_at_once_all_succeed(db_url: str) -> None:
    exits: list[tuple[int, str]] = []

    async def migrate() -> None:
        done = await anyio.run_process(
            [sys.executable, "-m", "aiki_server", "migrate", "--db", db_url], check=False
        )
        exits.append((done.returncode, done.stderr.decode()))

    async with anyio.create_task_group() as tg:
        for _ in range(REPLICAS):
            tg.start_soon(migrate)

    assert [code for code, _ in exits] == [0] * REPLICAS, exits
    db = open_database(db_url, WakeHub())
    await db.open()
    try:
        async with db.reader() as tx:
            rows = await tx.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await db.close()
    assert [row["version"] for row in rows] == [v for v, _ in _migrations(db.dialect)]
