"""A test harness: an Aiki server in the test's own process, with a clock the test moves.

    async with embedded_server() as server:
        transport = httpx.ASGITransport(app=server.app)
        async with Client("http://aiki.test", transport=transport) as client:
            async with Worker(client, [orders_v1]):
                handle = await orders_v1.start(client, order)
                await handle.wait_for_status([RunStatus.SLEEPING])
                server.advance(timedelta(days=7))  # the week-long sleep is over
                assert await handle.result() == "shipped"

The server runs on a temporary SQLite file (or the `db_url` given) and reads the time
from `server.clock`: the wall clock plus an offset that `advance()` moves forward, so
durable sleeps, event timeouts, retry back-offs and run deadlines fall due at once,
while everything else keeps real time.

Like any server, it is open (every request in the namespace `default`) until it holds
an API key: `server.create_api_key("billing")` creates one, and from then on every
request needs a key (`Client(..., api_key=created.key)`).

A test that needs a real server (HTTP on a port, a process to kill) starts one:

    async with server_process(db_url, "--claim-idle-timeout", "2") as server:
        async with Client(server.base_url) as client:
            ...
        server.kill()  # SIGKILL, like a power cut; `await server.stop()` is graceful

`server_process` returns once `/health` answers (`ServerStartError`, with the end of
the server's log, if it does not) and stops the server when the block ends.
`start_server` and `start_process` start one (or any program) without a block, for
a test that tears down on its own.
"""

from __future__ import annotations

import asyncio
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import anyio

from aiki_core.wire import to_millis
from aiki_server._api_keys import ApiKey, create_key, revoke_key
from aiki_server._app import ServerSettings, create_app
from aiki_server._clock import system_clock
from aiki_server._subprocess import (
    LoggedProcess,
    ServerProcess,
    ServerStartError,
    free_port,
    server_process,
    start_process,
    start_server,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import timedelta

    from fastapi import FastAPI

__all__ = (
    "ApiKey",
    "EmbeddedServer",
    "LoggedProcess",
    "ServerProcess",
    "ServerStartError",
    "TestClock",
    "embedded_server",
    "free_port",
    "server_process",
    "serving",
    "start_process",
    "start_server",
)


class TestClock:
    """The wall clock, shifted forward by what the test has skipped."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        """Now, in epoch milliseconds."""
        return system_clock() + self.offset_ms

    def advance(self, by: timedelta) -> None:
        """Skip `by` ahead."""
        if by.total_seconds() < 0:
            raise ValueError("the clock only moves forward")
        self.offset_ms += to_millis(by)


@dataclass
class EmbeddedServer:
    """A running in-process server: its ASGI `app` and its `clock`."""

    app: FastAPI
    clock: TestClock = field(default_factory=TestClock)

    def advance(self, by: timedelta) -> None:
        """Move the server's clock forward by `by`; whatever falls due runs now."""
        self.clock.advance(by)
        # the timer daemon looks at once, and each long-poll at its deadline
        self.app.state.hub.publish_all()

    async def create_api_key(self, namespace: str) -> ApiKey:
        """A new API key of `namespace`, as `aiki-server keys create` makes one.

        From now on every request needs a key (a running server would notice within
        `KEY_CACHE_TTL`; this one at once).
        """
        created = await create_key(self.app.state.db, namespace, self.clock())
        self.app.state.api_keys.forget()
        return created

    async def revoke_api_key(self, key_id: str) -> None:
        """Revoke a key by its id; the server refuses it at once."""
        if await revoke_key(self.app.state.db, key_id, self.clock()) is None:
            raise LookupError(f"no API key has the id {key_id!r}")
        self.app.state.api_keys.forget()


@asynccontextmanager
async def embedded_server(
    db_url: str | None = None, settings: ServerSettings | None = None
) -> AsyncIterator[EmbeddedServer]:
    """A server in this process, on a temporary SQLite file unless `db_url` is given.

    `settings` are used as given, except for the clock, which is the harness's, and
    the host names it answers: any (`allowed_hosts=("*",)`), as no browser reaches
    an app in process, so a test's client may use any base URL.
    """
    clock = TestClock()
    with tempfile.TemporaryDirectory(prefix="aiki-test-") as folder:
        url = db_url or f"sqlite:///{folder}/aiki.db"
        settings = replace(settings or ServerSettings(), clock=clock, allowed_hosts=("*",))
        app = create_app(url, settings)
        async with serving(app):
            yield EmbeddedServer(app, clock)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[FastAPI]:
    """`app` with its lifespan (database, timer daemon) running, until the block ends.

    The lifespan lives in an asyncio task of its own, so the block may be entered and
    left in different tasks, as pytest-asyncio does with a fixture's setup and
    teardown (a task group must be left in the task that entered it).
    """
    started, stop = anyio.Event(), anyio.Event()
    failures: list[BaseException] = []

    async def lifespan() -> None:
        try:
            async with app.router.lifespan_context(app):
                started.set()
                await stop.wait()
        except BaseException as exc:
            failures.append(exc)
            started.set()
            raise

    task = asyncio.create_task(lifespan())  # noqa: TID251 - see the docstring
    await started.wait()
    if failures:
        await asyncio.gather(task, return_exceptions=True)  # noqa: TID251 - reap it
        raise failures[0]
    try:
        yield app
    finally:
        stop.set()
        await task
