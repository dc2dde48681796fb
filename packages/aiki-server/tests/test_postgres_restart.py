"""PostgreSQL stopped and started again under a live server: 503s, then recovery.

The shared PostgreSQL must not be restarted, so the test runs a cluster of its own
(initdb as the `postgres` user on a free port; that needs root). While it is down,
every request answers 503 with `Retry-After`, each logged, and `/health` says writes
fail; once it is back, writes succeed, `/health` is ok, and the LISTEN connection is
back (the log says so) and carries NOTIFYs again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import asyncpg
import pytest

from aiki_server._storage._postgres import CHANNEL
from aiki_server.testing import free_port
from server_api import app_client, failed_requests, start

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aiki_server._storage._postgres import PostgresDatabase

BIN = Path("/usr/lib/postgresql/15/bin")
HEALTH = "http://127.0.0.1/health"


class Cluster:
    """A PostgreSQL cluster of this test's own, which it may stop and start."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        command = [str(BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-w", "-o", options]
        as_postgres(*command, "-l", str(self.folder / "log"), *args)

    def start(self) -> None:
        self.pg_ctl("start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")


def as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0 or not (BIN / "initdb").exists():
        pytest.skip("a PostgreSQL cluster of the test's own needs root and PostgreSQL 15")
    folder = Path(tempfile.mkdtemp(prefix="aiki-pg-"))
    shutil.chown(folder, "postgres")
    as_postgres(str(BIN / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres")
    own = Cluster(folder, free_port())
    own.start()
    try:
        yield own
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(BIN / "pg_ctl"),
                "-D",
                str(folder / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


async def test_a_postgresql_restart_is_a_logged_503_then_everything_recovers(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    async with app_client(cluster.url) as (app, client):
        await start(client)
        db: PostgresDatabase = app.state.db

        await anyio.to_thread.run_sync(cluster.stop)
        capsys.readouterr()
        with anyio.fail_after(30):
            answers = [await client.post("/runs", json={"workflow": "w", "version": "1"})]
            app.state.api_keys.forget()  # the API-key check asks the database too
            answers.append(await client.get("/runs"))
            health = await client.get(HEALTH)
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"]
            assert answer.json()["error"]["code"] == "storage_unavailable"
        assert health.status_code == 503
        assert health.json()["write_path"]["status"] == "failing"
        assert len(failed_requests(capsys.readouterr().err)) == len(answers)

        waiting = db.hub.subscribe("run:waiting-through-the-restart")
        await anyio.to_thread.run_sync(cluster.start)
        with anyio.fail_after(60):
            while True:  # the first requests may still find it starting up: 503s
                again = await client.post("/runs", json={"workflow": "w", "version": "1"})
                if again.status_code == 201:
                    break
                assert again.status_code == 503, again.text
                await anyio.sleep(0.2)
            assert (await client.get(HEALTH)).status_code == 200
            assert await waiting.wait(60)  # the LISTEN connection is back and woke every waiter
            arrived = db.hub.subscribe("run:from-another-replica")
            other = await asyncpg.connect(cluster.url)
            try:
                await other.execute(
                    "SELECT pg_notify($1, $2)", CHANNEL, "another-replica:run:from-another-replica"
                )
            finally:
                await other.close()
            assert await arrived.wait(60)

    log = capsys.readouterr().err
    assert "the LISTEN connection to PostgreSQL is back" in log
    assert "database writes succeed again" in log
