"""Fixtures of every test folder of the monorepo (pytest applies a rootdir conftest to all).

- `db_url`: a fresh database, once SQLite and once PostgreSQL (the fixture is
  parametrized, so a test that takes it runs on both). The PostgreSQL half needs
  `AIKI_TEST_POSTGRES_URL`; without it those tests skip, unless
  `AIKI_REQUIRE_POSTGRES=1` (as CI sets), which turns the skip into a failure.
- `server`, `client`, `worker`: an embedded server (`aiki_server.testing`) on `db_url`,
  a `Client` on it through httpx's ASGI transport, and a `Worker` of the versions the
  test module's `workflows` fixture names, running until the test ends. A module
  overrides `server_settings` for other settings of the server.
- `@pytest.mark.only_on("postgresql", why)`: a test of one database's behaviour
  (replicas sharing a database, row locks between writers) runs on that database only:
  its other half is deselected, not skipped. A test that takes `second_app` (a second
  replica, PostgreSQL's alone) is marked so by itself.
- `processes`: starts real processes for a test (`python -m aiki_server` on a free
  port, a worker program, ...) and SIGKILLs whatever still runs when the test ends.
  The classes live in `tests/live_processes.py`, so tests can annotate with them.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

import asyncpg
import httpx
import pytest

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel
from aiki_server import ServerSettings
from aiki_server.testing import embedded_server
from aiki_worker import Worker
from live_processes import LiveProcesses

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from aiki_core.sdk import ExecutableVersion
    from aiki_server.testing import EmbeddedServer

POSTGRES_URL = os.environ.get("AIKI_TEST_POSTGRES_URL")
REQUIRE_POSTGRES = os.environ.get("AIKI_REQUIRE_POSTGRES") == "1"
QUIET = ConsoleLogger(LogLevel.ERROR)
"""The logger of the `client` and `worker` fixtures: errors only."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the halves of `only_on` tests (and `second_app` ones) on the other database."""
    elsewhere = []
    for item in items:
        params = getattr(item, "callspec", None)
        dialect = params.params.get("db_url") if params is not None else None
        marker = item.get_closest_marker("only_on")
        only = marker.args[0] if marker is not None else None
        if "second_app" in getattr(item, "fixturenames", ()):
            only = "postgresql"
        if dialect is not None and only is not None and dialect != only:
            elsewhere.append(item)
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = [item for item in items if item not in elsewhere]


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty database: a SQLite file, or a fresh PostgreSQL schema.

    The PostgreSQL URL selects the schema with `?search_path=`; the schema is
    dropped when the test ends.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'aiki.db'}"
        return
    if not POSTGRES_URL:
        if REQUIRE_POSTGRES:
            pytest.fail("AIKI_REQUIRE_POSTGRES=1 but AIKI_TEST_POSTGRES_URL is not set")
        pytest.skip("AIKI_TEST_POSTGRES_URL is not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield f"{POSTGRES_URL}?search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


@pytest.fixture
def server_settings() -> ServerSettings:
    """The settings of the `server` fixture: the defaults, unless a test module overrides."""
    return ServerSettings()


@pytest.fixture
async def server(db_url: str, server_settings: ServerSettings) -> AsyncIterator[EmbeddedServer]:
    """An embedded server on `db_url`, whose clock the test moves (`server.advance`)."""
    async with embedded_server(db_url, server_settings) as embedded:
        yield embedded


@pytest.fixture
async def client(server: EmbeddedServer) -> AsyncIterator[Client]:
    """A client of `server`, in process (httpx's ASGI transport), logging errors only."""
    transport = httpx.ASGITransport(app=server.app)
    async with Client("http://aiki.test", transport=transport, logger=QUIET) as connected:
        yield connected


@pytest.fixture
async def worker(client: Client, workflows: Sequence[ExecutableVersion]) -> AsyncIterator[Worker]:
    """A worker of `workflows` (a fixture of the test module) on `client`, until the test ends."""
    async with Worker(client, workflows, logger=QUIET) as running:
        yield running


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[LiveProcesses]:
    """Real processes for this test; SIGKILLed and reaped when it ends.

        server = await processes.start_server(db_url, "--claim-idle-timeout", "2")
        server.kill(); await server.wait()
        again = await processes.start_server(db_url, port=server.port)
        worker = await processes.spawn("worker", [sys.executable, "app.py", ...])

    `start_server` returns once `/health` answers. Each process logs to its own file
    under the test's `tmp_path`; the logs are printed at the end, so a failed test
    shows them.
    """
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    group = LiveProcesses(log_dir)
    try:
        yield group
    finally:
        await group.aclose()
        if group.started:
            print(group.logs())  # noqa: T201 - pytest shows it for a failed test
