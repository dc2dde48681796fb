"""A worker whose API key the server refuses stops and raises, rather than retrying forever.

An embedded server (`aiki_server.testing`, on both databases) with keys, clients over
httpx's ASGI transport, and real workers in the test's process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from aiki_client import Client
from aiki_core import AuthenticationError, ConsoleLogger, LogLevel, RunStatus
from aiki_server.testing import embedded_server
from aiki_task import task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, workflow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiki_server.testing import EmbeddedServer

QUIET = ConsoleLogger(LogLevel.ERROR)
DEADLINE = 10.0


@dataclass
class Gate:
    """Holds the gated task until the test opens it."""

    entered: anyio.Event = field(default_factory=anyio.Event)
    opened: anyio.Event = field(default_factory=anyio.Event)


GATE = Gate()


@task("keys-gated")
async def gated(label: str) -> str:
    """Wait for the test to open the gate."""
    GATE.entered.set()
    await GATE.opened.wait()
    return f"{label} passed"


held = workflow("keys-held")


@held.v("1")
async def held_v1(run: WorkflowRun, label: str) -> str:
    """One gated task."""
    return await gated.start(run, label)


@pytest.fixture
async def server(db_url: str) -> AsyncIterator[EmbeddedServer]:
    global GATE
    GATE = Gate()
    async with embedded_server(db_url) as embedded:
        yield embedded


def client(server: EmbeddedServer, key: str | None) -> Client:
    transport = httpx.ASGITransport(app=server.app)
    return Client("http://aiki.test", api_key=key, transport=transport, logger=QUIET)


async def test_a_worker_without_a_key_stops_with_authentication_error(
    server: EmbeddedServer,
) -> None:
    await server.create_api_key("team-a")

    async with client(server, None) as keyless:
        worker = Worker(keyless, [held_v1], logger=QUIET)
        with anyio.fail_after(DEADLINE), pytest.raises(AuthenticationError):
            await worker.run()


async def test_a_key_revoked_mid_run_stops_the_worker_and_the_run_is_resumed_elsewhere(
    server: EmbeddedServer,
) -> None:
    revoked = await server.create_api_key("team-a")
    kept = await server.create_api_key("team-a")
    async with client(server, revoked.key) as doomed, client(server, kept.key) as steady:
        handle = await held_v1.start(steady, "ada")
        with anyio.fail_after(DEADLINE), pytest.raises(AuthenticationError):
            async with Worker(doomed, [held_v1], logger=QUIET):
                await GATE.entered.wait()
                await server.revoke_api_key(revoked.id)
                GATE.opened.set()  # the task ends; recording it is refused
                await anyio.sleep_forever()  # the worker's refusal ends this block

        # nothing was recorded: the run waits, still claimed, until the claim goes idle
        detail = await handle.detail()
        assert detail.status is RunStatus.RUNNING
        assert detail.tasks == []
        server.advance(timedelta(minutes=2))
        async with Worker(steady, [held_v1], logger=QUIET):
            assert await handle.result(timeout=timedelta(seconds=DEADLINE)) == "ada passed"
