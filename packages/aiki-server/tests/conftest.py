"""Fixtures: the server app on a fresh SQLite file and on a fresh PostgreSQL schema.

Every storage test runs against both databases: the `db_url` fixture of the root
`conftest.py` is parametrized (it also says how the PostgreSQL half is configured).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from aiki_server import ServerSettings, create_app
from aiki_server.testing import serving

if TYPE_CHECKING:
    from fastapi import FastAPI


IN_PROCESS: dict[str, Any] = {"allowed_hosts": ("aiki",)}
"""Settings of an app the tests reach in process, at `http://aiki`."""


class ManualClock:
    """Epoch milliseconds that move only when a test says so."""

    def __init__(self, start_ms: int = 1_800_000_000_000) -> None:
        self.now = start_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@dataclass
class Harness:
    """A live app with a manual clock, and an HTTP client on it."""

    client: httpx.AsyncClient
    app: FastAPI
    clock: ManualClock

    def advance(self, ms: int) -> None:
        """Move the clock forward; the timer daemon and each long-poll look at once."""
        self.clock.advance(ms)
        self.app.state.hub.publish_all()


HarnessFactory = Callable[..., AbstractAsyncContextManager[Harness]]


@pytest.fixture
def make_harness(db_url: str) -> HarnessFactory:
    """`async with make_harness(claim_idle_timeout=...) as h`: a harness with those settings."""

    @asynccontextmanager
    async def make(**settings: Any) -> AsyncIterator[Harness]:
        clock = ManualClock()
        app = create_app(db_url, ServerSettings(clock=clock, **{**IN_PROCESS, **settings}))
        async with running_app(app) as client:
            yield Harness(client, app, clock)

    return make


@pytest.fixture
async def harness(make_harness: HarnessFactory) -> AsyncIterator[Harness]:
    """A harness with default settings and a manual clock."""
    async with make_harness() as h:
        yield h


@pytest.fixture
async def server(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on a live app with the wall clock."""
    async with running_app(create_app(db_url, ServerSettings(**IN_PROCESS))) as client:
        yield client


@asynccontextmanager
async def running_app(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and an HTTP client on it (in process)."""
    async with (
        serving(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://aiki/api/v1"
        ) as client,
    ):
        yield client


@pytest.fixture
async def second_app(db_url: str, server: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """A second replica (wall clock) on the same database as `server`, for cross-replica tests.

    PostgreSQL only (one process owns a SQLite file): the root conftest deselects the
    SQLite half of a test that takes it.
    """
    del server  # only its order matters: the first replica (and the migrations) come first
    async with running_app(create_app(db_url, ServerSettings(**IN_PROCESS))) as client:
        yield client
