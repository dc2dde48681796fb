"""The PostgreSQL LISTEN connection connects again after it is lost, and says so.

The shared PostgreSQL is not restarted: the test terminates only its own replica's
LISTEN backend, by that connection's pid. A NOTIFY from another session must then
reach the replica's wake-up hub again, and every local waiter is woken once, since
what was NOTIFYed while the connection was down is lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import asyncpg
import pytest

from aiki_server import ServerSettings, create_app
from aiki_server._storage._postgres import CHANNEL
from aiki_server.testing import serving

if TYPE_CHECKING:
    from aiki_server._storage._postgres import PostgresDatabase


@pytest.mark.only_on(
    "postgresql",
    "LISTEN/NOTIFY is PostgreSQL's: a SQLite server has no other replica",
)
async def test_the_listen_connection_reconnects_and_wakes_every_waiter(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(db_url, ServerSettings())
    async with serving(app):
        db: PostgresDatabase = app.state.db
        hub = db.hub
        assert db._listener is not None
        pid = db._listener.get_server_pid()
        waiting = hub.subscribe("run:waiting-all-along")

        other = await asyncpg.connect(db_url.split("?", 1)[0])
        try:
            assert await other.fetchval("SELECT pg_terminate_backend($1)", pid)
            with anyio.fail_after(20):
                # once connected again, a waiter from before the loss is woken: its
                # NOTIFY may have been lost
                assert await waiting.wait(20)
                # a NOTIFY from another session (another replica) arrives again
                arrived = hub.subscribe("run:from-another-replica")
                await other.execute(
                    "SELECT pg_notify($1, $2)", CHANNEL, "another-replica:run:from-another-replica"
                )
                assert await arrived.wait(20)
        finally:
            await other.close()
        assert db._listener.get_server_pid() != pid

    log = capsys.readouterr().err
    assert "the LISTEN connection to PostgreSQL was lost; connecting again" in log
    assert "the LISTEN connection to PostgreSQL is back" in log
