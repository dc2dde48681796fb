"""A database that cannot write: fast 503s with `Retry-After`, each logged, `/health` says so.

The outage is real on each database. On SQLite the file really fills: the writer
connection's `max_page_count` is lowered to the pages it has, so SQLite answers
SQLITE_FULL, as on a full disk. On PostgreSQL the app connects as a role of its own,
whose backends are terminated and whose new connections are refused (`CONNECTION
LIMIT 0`), so no other session of the shared server is touched. Then space (or the
connection limit) comes back, and writes succeed again without a restart.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest

from aiki_client import Client
from aiki_core import ServerUnavailableError, StorageUnavailableError
from aiki_core.wire import RecordTaskRequest
from aiki_server._storage._outage import RETRY_AFTER_SECONDS
from server_api import app_client, asgi, claim_one, failed_requests, start, task_record

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx
    from fastapi import FastAPI

HEALTH = "http://127.0.0.1/health"
BIG = "x" * 20_000
"""A payload larger than a page: writing it always needs new pages."""
START = {"workflow": "w", "version": "1", "input": BIG}


@dataclass
class Outage:
    """Breaks and restores the write path of the app's database for real."""

    url: str
    admin_url: str | None
    role: str | None

    async def begin(self, app: FastAPI) -> None:
        db = app.state.db
        if self.role is None:
            conn = db._writer
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")
            # use up the free pages too: now no write needing a page can succeed
            conn.execute("CREATE TABLE IF NOT EXISTS filler (blob BLOB)")
            for size in (4000, 1000, 100):
                with contextlib.suppress(sqlite3.OperationalError):
                    while True:
                        conn.execute("INSERT INTO filler VALUES (zeroblob(?))", (size,))
            return
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f"ALTER ROLE {self.role} CONNECTION LIMIT 0")
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                self.role,
            )
        finally:
            await admin.close()

    async def end(self, app: FastAPI) -> None:
        if self.role is None:
            app.state.db._writer.execute("PRAGMA max_page_count = 1073741823")
            return
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f"ALTER ROLE {self.role} CONNECTION LIMIT -1")
        finally:
            await admin.close()


@pytest.fixture
async def outage(db_url: str) -> AsyncIterator[Outage]:
    """The database of `db_url`, reached in a way this test alone can break."""
    if db_url.startswith("sqlite"):
        yield Outage(db_url, None, None)
        return
    parts = urlsplit(db_url)
    schema = parts.query.removeprefix("search_path=")
    admin_url = urlunsplit(parts._replace(query=""))
    role = f"aiki_outage_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")  # not a superuser: limits apply
        await admin.execute(f"GRANT ALL ON SCHEMA {schema} TO {role}")
        host = parts.netloc.rsplit("@", 1)[-1]
        yield Outage(urlunsplit(parts._replace(netloc=f"{role}@{host}")), admin_url, role)
    finally:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        await admin.execute(f"DROP OWNED BY {role} CASCADE")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


async def test_writes_fail_fast_with_a_503_while_the_database_cannot_write_and_recover(
    outage: Outage, capsys: pytest.CaptureFixture[str]
) -> None:
    async with app_client(outage.url) as (app, client):
        run_id = (await start(client, input=BIG))["id"]
        revision = (await claim_one(client))["run"]["revision"]
        assert (await client.get(HEALTH)).json()["write_path"] == {"status": "ok"}
        capsys.readouterr()

        await outage.begin(app)
        answers: list[httpx.Response] = []
        with anyio.fail_after(30):  # before the fix, the first full write hung every later one
            answers += [await client.post("/runs", json=START) for _ in range(3)]
            # the worker's per-task call, served by the hot path
            record = task_record(revision, result=BIG)
            answers.append(await client.post(f"/runs/{run_id}/tasks", json=record))
            # the API-key check asks the database whether any key exists
            app.state.api_keys.forget()
            answers.append(await client.post("/runs", json=START))
            health = await client.get(HEALTH)
            # the worker's client raises the typed 503, with how long to wait (on plain
            # requests: an opening of its channel would be a failed request of its own)
            async with Client("http://127.0.0.1", transport=asgi(app), channel=False) as sdk:
                with pytest.raises(StorageUnavailableError) as raised:
                    await sdk.record_task(run_id, RecordTaskRequest.model_validate(record))
            answers.append(answers[3])  # the SDK's request was logged too
        assert isinstance(raised.value, ServerUnavailableError)
        assert raised.value.retry_after == RETRY_AFTER_SECONDS

        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert int(answer.headers["retry-after"]) >= 1
            error = answer.json()["error"]
            assert error["code"] == "storage_unavailable"
            assert error["details"]["retry_after"] == int(answer.headers["retry-after"])
        assert health.status_code == 503
        failing = health.json()
        assert failing["status"] == "failing"
        assert failing["write_path"]["status"] == "failing"
        assert failing["write_path"]["since"]
        assert failing["write_path"]["error"]

        # one error line per 5xx answer, with its cause, method and path
        logged = failed_requests(capsys.readouterr().err)
        assert len(logged) == len(answers)
        for line, answer in zip(logged, answers, strict=True):
            assert line["status"] == 503
            assert line["method"] == "POST"
            assert line["path"] == answer.request.url.path
            assert line["error"]
            assert "Traceback" in line["traceback"]

        await outage.end(app)
        with anyio.fail_after(30):  # writes recover by themselves once space is back
            while True:
                again = await client.post("/runs", json=START)
                if again.status_code == 201:
                    break
                assert again.status_code == 503, again.text
                await anyio.sleep(0.2)
        healthy = await client.get(HEALTH)
        assert healthy.status_code == 200
        assert healthy.json()["status"] == "ok"
        assert healthy.json()["write_path"] == {"status": "ok"}
