"""Push endpoints through the client, against a real server process with API keys.

`client.endpoints` registers workflow endpoints from versions or tuples and task
endpoints from tasks or names, lists, reads and deletes them, and rotates their
secret; the secret is shown only by the create and the rotation, and it signs what
a `PushVerifier` built from it accepts. Bad input is refused by the client before
anything is sent, and another namespace's key sees none of it. Every test runs on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from aiki_client import Client
from aiki_core import NotFoundError, PayloadValidationError
from aiki_core.push import PushSecret, PushVerifier, sign_push
from aiki_core.wire import WorkflowCapability
from aiki_task import task
from e2e_app import hello_v1
from e2e_support import QUIET

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from live_processes import LiveProcesses


@task("endpoint-send-mail")
async def send_mail(to: str) -> str:
    return to


@pytest.fixture
async def clients(db_url: str, processes: LiveProcesses) -> AsyncIterator[tuple[Client, Client]]:
    """Clients of two namespaces on one real server."""
    server = await processes.start_server(db_url)
    key_a = await server.create_api_key("team-a")
    key_b = await server.create_api_key("team-b")
    async with (
        Client(server.base_url, api_key=key_a.key, logger=QUIET) as a,
        Client(server.base_url, api_key=key_b.key, logger=QUIET) as b,
    ):
        yield a, b


async def test_create_list_get_rotate_delete(clients: tuple[Client, Client]) -> None:
    a, b = clients
    runs = await a.endpoints.create(
        "https://runs.example/aiki",
        workflows=[hello_v1, ("billing", "2"), ("billing", "3", "gpu")],
        pool="blue",
        max_in_flight=4,
        timeout=timedelta(seconds=30),
    )
    tasks = await a.endpoints.create("http://tasks.example/", tasks=[send_mail, "charge"])

    assert runs.endpoint.kind == "workflows"
    assert runs.endpoint.workflows == [
        WorkflowCapability(workflow=hello_v1.workflow, version=hello_v1.version, pool="blue"),
        WorkflowCapability(workflow="billing", version="2", pool="blue"),
        WorkflowCapability(workflow="billing", version="3", pool="gpu"),
    ]
    assert (runs.endpoint.max_in_flight, runs.endpoint.timeout) == (4, timedelta(seconds=30))
    assert tasks.endpoint.kind == "tasks"
    assert tasks.endpoint.tasks == ["endpoint-send-mail", "charge"]
    assert tasks.endpoint.status == "healthy"
    assert [e.id for e in await a.endpoints.list()] == [runs.endpoint.id, tasks.endpoint.id]
    assert await a.endpoints.get(runs.endpoint.id) == runs.endpoint

    # the secret signs what a verifier built from it accepts
    body = b'{"hello": "endpoint"}'
    headers = sign_push(body, [PushSecret.parse(runs.secret)])
    assert PushVerifier([runs.secret]).verify(headers, body) == headers["aiki-push-id"]

    rotated = await a.endpoints.rotate_secret(
        runs.endpoint.id, previous_expires_in=timedelta(hours=1)
    )
    new, old = rotated.endpoint.secrets
    assert new.key_id == PushSecret.parse(rotated.secret).key_id
    assert (new.expires_at, old.key_id) == (None, PushSecret.parse(runs.secret).key_id)
    assert old.expires_at is not None
    revoked = await a.endpoints.rotate_secret(runs.endpoint.id, previous_expires_in=timedelta(0))
    assert [s.key_id for s in revoked.endpoint.secrets] == [PushSecret.parse(revoked.secret).key_id]

    # another namespace sees none of it, and cannot touch it
    assert await b.endpoints.list() == []
    for call in (
        b.endpoints.get(runs.endpoint.id),
        b.endpoints.delete(runs.endpoint.id),
        b.endpoints.rotate_secret(runs.endpoint.id),
    ):
        with pytest.raises(NotFoundError):
            await call
    assert await a.endpoints.get(runs.endpoint.id) == revoked.endpoint

    assert await a.endpoints.delete(runs.endpoint.id) == revoked.endpoint
    with pytest.raises(NotFoundError):
        await a.endpoints.get(runs.endpoint.id)
    assert [e.id for e in await a.endpoints.list()] == [tasks.endpoint.id]


async def test_bad_input_is_refused_before_anything_is_sent(
    clients: tuple[Client, Client],
) -> None:
    a, _ = clients
    endpoint = (await a.endpoints.create("https://tasks.example", tasks=["t"])).endpoint
    bad_creates: list[dict[str, Any]] = [
        {"url": "ftp://tasks.example", "tasks": ["t"]},
        {"url": "https://user:pw@tasks.example", "tasks": ["t"]},
        {"url": "https://tasks.example/#x", "tasks": ["t"]},
        {"url": "https://tasks.example"},
        {"url": "https://tasks.example", "tasks": ["t"], "workflows": [hello_v1]},
        {"url": "https://tasks.example", "tasks": []},
        {"url": "https://tasks.example", "tasks": ["t", "t"]},
        {"url": "https://tasks.example", "tasks": ["t"], "max_in_flight": 0},
        {"url": "https://tasks.example", "tasks": ["t"], "timeout": timedelta(hours=1)},
        # a str is an iterable too: its letters were taken for task names
        {"url": "https://tasks.example", "tasks": "sendmail"},
        {"url": "https://tasks.example", "workflows": "hello"},
        # a version given alone, and items that are no version (not an AttributeError)
        {"url": "https://tasks.example", "workflows": ("hello", "1")},
        {"url": "https://tasks.example", "workflows": [("hello",)]},
        {"url": "https://tasks.example", "workflows": [42]},
        {"url": "https://tasks.example", "tasks": [42]},
    ]
    for create in bad_creates:
        with pytest.raises(PayloadValidationError):
            await a.endpoints.create(**create)
    with pytest.raises(PayloadValidationError):
        await a.endpoints.rotate_secret(endpoint.id, previous_expires_in=timedelta(days=31))
    with pytest.raises(NotFoundError):
        await a.endpoints.get("../runs")

    assert await a.endpoints.list() == [endpoint]
