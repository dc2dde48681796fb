"""API keys: the 401s, the open server, public routes, revocation, the CLI and the bind rule.

In-process tests run the app on both databases; the command line runs as real
`python -m aiki_server` processes on the same databases.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sys
import time
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from ulid import ULID

from aiki_core.wire import DEFAULT_NAMESPACE
from aiki_server import _auth
from aiki_server._api_keys import create_key, revoke_key
from aiki_server._auth import KEY_CACHE_TTL, ApiKeys
from aiki_server._notify import WakeHub
from aiki_server._storage._database import _migrations
from aiki_server._storage._open import open_database
from aiki_server.testing import free_port
from server_api import (
    START_MS,
    claim_one,
    client_with,
    error_of,
    new_key,
    start,
    task_record,
)

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import Message

    from live_processes import LiveProcesses
    from server_api import Harness, HarnessFactory

KEY_PATTERN = re.compile(r"^aiki_[0-9A-HJKMNP-TV-Z]{26}_[A-Za-z0-9_-]{43}$")
UNKNOWN_KEY = "aiki_01JAAAAAAAAAAAAAAAAAAAAAAA_" + "x" * 43


def assert_unauthenticated(r: httpx.Response, challenge: str) -> None:
    """`r` is the wire 401 with the given `WWW-Authenticate` challenge."""
    error_of(r, 401, "unauthenticated")
    assert r.headers["www-authenticate"] == challenge


async def wait_until_refused(app: FastAPI, key: str | None) -> float:
    """Seconds until a request with `key` (or none) is refused; fails past the cache's TTL."""
    began = time.monotonic()
    async with client_with(app, key) as client:
        with anyio.fail_after(KEY_CACHE_TTL + 1):
            while (await client.get("/runs")).status_code != 401:  # noqa: ASYNC110 - HTTP
                await anyio.sleep(0.05)
    return time.monotonic() - began


# -- the open server ------------------------------------------------------------------------


async def test_a_server_without_keys_is_open_in_the_default_namespace(harness: Harness) -> None:
    run = await start(harness.client)

    assert run["namespace"] == DEFAULT_NAMESPACE
    assert (await harness.client.get(f"/runs/{run['id']}")).status_code == 200


async def test_an_open_server_still_refuses_a_key_it_does_not_know(harness: Harness) -> None:
    async with client_with(harness.app, UNKNOWN_KEY) as client:
        assert_unauthenticated(await client.get("/runs"), 'Bearer error="invalid_token"')


async def test_the_first_key_closes_the_open_server_within_the_ttl(harness: Harness) -> None:
    assert (await harness.client.get("/runs")).status_code == 200  # open: remembered a while
    created = await new_key(harness.app, "billing")

    async with client_with(harness.app, created.key) as client:
        r = await client.post("/runs", json={"workflow": "w", "version": "1"})
    assert r.status_code == 201, r.text  # the new key works at once
    assert r.json()["run"]["namespace"] == "billing"
    assert await wait_until_refused(harness.app, None) <= KEY_CACHE_TTL + 0.5


async def test_require_api_key_refuses_even_an_empty_database(
    make_harness: HarnessFactory,
) -> None:
    async with make_harness(require_api_key=True) as h:
        assert_unauthenticated(await h.client.get("/runs"), "Bearer")
        created = await new_key(h.app, "billing")
        async with client_with(h.app, created.key) as client:
            assert (await client.get("/runs")).status_code == 200


# -- a server with keys ---------------------------------------------------------------------


async def test_a_request_without_a_key_is_401_on_every_kind_of_route(harness: Harness) -> None:
    billing = await new_key(harness.app, "billing")
    async with client_with(harness.app, billing.key) as keyed:
        run = await start(keyed)
        claimed = await claim_one(keyed)
    record = task_record(claimed["run"]["revision"])

    async with client_with(harness.app, None) as client:
        answers = [
            await client.get("/runs"),
            await client.get(f"/runs/{run['id']}"),
            await client.post("/claims", json={"worker_id": "w", "capabilities": []}),
            await client.post(f"/runs/{run['id']}/tasks", json=record),  # the hot path's
            await client.get("/schedules"),
            await client.get("/no-such-route"),
            await client.post("/runs", content=b"x" * 3_000_000),  # before the size limit
        ]
    for r in answers:
        assert_unauthenticated(r, "Bearer")
    async with client_with(harness.app, billing.key) as keyed:
        detail = (await keyed.get(f"/runs/{run['id']}")).json()
    assert detail["tasks"] == []  # the refused task record wrote nothing


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer nope",
        f"Bearer {UNKNOWN_KEY}",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        f"Token {UNKNOWN_KEY}",
        f"Bearer {UNKNOWN_KEY} extra",
    ],
)
async def test_a_malformed_or_unknown_key_is_401_invalid_token(
    harness: Harness, authorization: str
) -> None:
    await new_key(harness.app, "billing")
    r = await harness.client.get("/runs", headers={"authorization": authorization})

    assert_unauthenticated(r, 'Bearer error="invalid_token"')


async def test_a_key_scopes_each_request_to_its_namespace(harness: Harness) -> None:
    billing = await new_key(harness.app, "billing")

    async with client_with(harness.app, billing.key) as client:
        run = await start(client)
        # the scheme is case-insensitive (RFC 9110)
        shouted = await client.get(
            f"/runs/{run['id']}", headers={"authorization": f"BEARER {billing.key}"}
        )
    assert run["namespace"] == "billing"
    assert shouted.status_code == 200
    assert shouted.json()["namespace"] == "billing"


async def test_a_revoked_key_is_refused_within_the_cache_ttl(harness: Harness) -> None:
    first = await new_key(harness.app, "billing")
    second = await new_key(harness.app, "billing")
    async with client_with(harness.app, first.key) as client:
        assert (await client.get("/runs")).status_code == 200  # cached as good

    await revoke_key(harness.app.state.db, first.id, START_MS)

    assert await wait_until_refused(harness.app, first.key) <= KEY_CACHE_TTL + 0.5
    async with client_with(harness.app, first.key) as client:
        assert_unauthenticated(await client.get("/runs"), 'Bearer error="invalid_token"')
    async with client_with(harness.app, second.key) as client:
        assert (await client.get("/runs")).status_code == 200


async def test_a_flood_of_made_up_keys_does_not_evict_a_live_one(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_auth, "_MAX_REFUSED", 20)
    db = open_database(db_url, WakeHub())
    await db.open()
    try:
        await db.migrate()
        live = await create_key(db, "billing", START_MS)
        keys = ApiKeys(db)
        assert await keys.namespace_of(live.key) == "billing"
        for _ in range(3 * 20):
            made_up = f"aiki_{ULID()}_{secrets.token_urlsafe(32)}"
            assert await keys.namespace_of(made_up) is None
    finally:
        await db.close()
    # the database is closed: the live key's answer can only come from the cache
    assert await keys.namespace_of(live.key) == "billing"


async def test_a_websocket_is_closed_before_any_route(harness: Harness) -> None:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/api/v1/runs", "headers": [], "query_string": b""}
    await harness.app(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


async def test_public_routes_answer_without_a_key(harness: Harness) -> None:
    billing = await new_key(harness.app, "billing")
    async with client_with(harness.app, billing.key) as client:
        run = await start(client)
        claimed = await claim_one(client)
        minted = await client.post(
            f"/runs/{run['id']}/webhooks",
            json={
                "revision": claimed["run"]["revision"],
                "event": "paid",
                "expires_in": 3_600_000,
                "schema": {"type": "object"},
            },
        )
    assert minted.status_code == 201, minted.text

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=harness.app), base_url="http://aiki"
    ) as anonymous:
        health = await anonymous.get("/health")
        spec = await anonymous.get("/openapi.json")
        docs = await anonymous.get("/docs")
        delivered = await anonymous.post(minted.json()["path"], json={"txn": "t-1"})
        forged = await anonymous.post(
            "/api/v1/webhooks/01JAAAAAAAAAAAAAAAAAAAAAAA?expires=1&signature=x", json={}
        )

    assert health.status_code == 200
    assert spec.status_code == 200
    assert docs.status_code == 200
    assert delivered.status_code == 200, delivered.text
    error_of(forged, 403, "permission_denied")  # the webhook's own answer, not the key layer's
    async with client_with(harness.app, billing.key) as client:
        detail = (await client.get(f"/runs/{run['id']}")).json()
    assert [(e["name"], e["data"]) for e in detail["events"]] == [("paid", {"txn": "t-1"})]


async def test_the_openapi_declares_the_bearer_scheme_on_every_keyed_route(
    harness: Harness,
) -> None:
    spec = (await harness.client.get("http://aiki/openapi.json")).json()

    scheme = spec["components"]["securitySchemes"]["ApiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            public = path == "/api/v1/webhooks/{webhook_id}"
            assert operation.get("security") == (None if public else [{"ApiKey": []}]), (
                method,
                path,
            )
            if not public:
                assert "401" in operation["responses"], (method, path)


# -- the command line -------------------------------------------------------------------------


async def aiki_server(*args: str) -> tuple[int, str, str]:
    """`python -m aiki_server *args` to its end; exit status, stdout, stderr."""
    done = await anyio.run_process([sys.executable, "-m", "aiki_server", *args], check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def stored_keys(db_url: str) -> list[dict[str, object]]:
    db = open_database(db_url, WakeHub())
    await db.open()
    try:
        async with db.reader() as tx:
            return [dict(row) for row in await tx.fetch("SELECT * FROM api_keys ORDER BY id")]
    finally:
        await db.close()


async def test_keys_create_prints_the_key_once_and_stores_only_its_hash(db_url: str) -> None:
    status, out, err = await aiki_server("keys", "create", "--db", db_url, "--namespace", "billing")

    assert status == 0, err
    key = out.strip()
    assert out == f"{key}\n"  # the key alone on stdout: KEY=$(aiki-server keys create ...)
    assert KEY_PATTERN.match(key), key
    key_id = key[5:31]
    assert key_id in err
    assert "billing" in err
    [row] = await stored_keys(db_url)
    assert row["id"] == key_id
    assert row["namespace"] == "billing"
    assert row["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert row["revoked_at"] is None
    assert all(key[32:] not in str(value) for value in row.values())


async def test_keys_list_and_revoke(db_url: str) -> None:
    _, first_key, _ = await aiki_server("keys", "create", "--db", db_url, "--namespace", "a")
    _, second_key, _ = await aiki_server("keys", "create", "--db", db_url, "--namespace", "b.c")
    first, second = first_key.strip()[5:31], second_key.strip()[5:31]

    revoked = await aiki_server("keys", "revoke", "--db", db_url, first)
    again = await aiki_server("keys", "revoke", "--db", db_url, first)
    unknown = await aiki_server("keys", "revoke", "--db", db_url, "01JAAAAAAAAAAAAAAAAAAAAAAA")
    status, listing, _ = await aiki_server("keys", "list", "--db", db_url)

    assert revoked[0] == 0, revoked
    assert "revoked" in revoked[2]
    assert again[0] == 0, again
    assert "before" in again[2]
    assert unknown[0] == 1
    assert "no API key" in unknown[2]
    assert status == 0
    header, *lines = listing.splitlines()
    assert header.split() == ["ID", "NAMESPACE", "CREATED", "REVOKED"]
    rows = [line.split() for line in lines]
    assert [(r[0], r[1]) for r in rows] == [(first, "a"), (second, "b.c")]
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    assert stamp.match(rows[0][3]), rows  # revoked, with its time
    assert rows[1][3] == "-"
    assert all(stamp.match(r[2]) for r in rows), rows
    hashes = {str(row["key_hash"]) for row in await stored_keys(db_url)}
    assert not any(h in listing for h in hashes)  # never the hash


async def test_a_db_given_before_the_subcommand_is_the_one_used(db_url: str) -> None:
    status, out, err = await aiki_server("--db", db_url, "keys", "create", "--namespace=ops")
    assert status == 0, err

    _, listing, _ = await aiki_server("keys", "list", "--db", db_url)

    assert out.strip()[5:31] in listing


@pytest.mark.parametrize("namespace", ["", "has space", "-leading", "x" * 201, "é"])
async def test_keys_create_refuses_an_invalid_namespace(db_url: str, namespace: str) -> None:
    status, out, err = await aiki_server(
        "keys", "create", "--db", db_url, f"--namespace={namespace}"
    )

    assert status == 2
    assert out == ""
    assert "invalid namespace" in err
    _, listing, _ = await aiki_server("keys", "list", "--db", db_url)
    assert listing.split() == ["ID", "NAMESPACE", "CREATED", "REVOKED"]


async def test_migrate_applies_every_version(db_url: str) -> None:
    status, _, err = await aiki_server("migrate", "--db", db_url)

    assert status == 0, err
    dialect = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    assert str([version for version, _ in _migrations(dialect)]) in err
    assert "versions=[1, 2, 3, 4, 5, " in err  # at least up to the API keys


# -- the bind rule ----------------------------------------------------------------------------


async def test_serve_refuses_a_public_address_without_keys(
    db_url: str, processes: LiveProcesses
) -> None:
    server = await processes.spawn(
        "server",
        [
            sys.executable,
            "-m",
            "aiki_server",
            "--db",
            db_url,
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
    )

    assert await server.wait() == 2
    assert "refusing to serve on 0.0.0.0" in server.log_text()
    assert "keys create" in server.log_text()


async def test_serve_binds_a_public_address_once_a_key_exists(
    db_url: str, processes: LiveProcesses
) -> None:
    status, out, err = await aiki_server("keys", "create", "--db", db_url, "--namespace", "ops")
    assert status == 0, err

    server = await processes.start_server(db_url, "--host", "0.0.0.0")

    async with httpx.AsyncClient(base_url=server.base_url) as client:
        anonymous = await client.get("/api/v1/runs")
        keyed = await client.get("/api/v1/runs", headers={"authorization": f"Bearer {out.strip()}"})
    assert_unauthenticated(anonymous, "Bearer")
    assert keyed.status_code == 200


@pytest.mark.parametrize("how", ["option", "environment"])
async def test_require_api_key_serves_a_public_address_and_refuses_keyless_requests(
    db_url: str, processes: LiveProcesses, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    args = ["--host", "0.0.0.0"]
    if how == "option":
        args.append("--require-api-key")
    else:
        monkeypatch.setenv("AIKI_REQUIRE_API_KEY", "1")

    server = await processes.start_server(db_url, *args)

    async with httpx.AsyncClient(base_url=server.base_url) as client:
        assert_unauthenticated(await client.get("/api/v1/runs"), "Bearer")
        assert (await client.get("/health")).status_code == 200
    created = await server.create_api_key("ops")
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"authorization": f"Bearer {created.key}"}
    ) as client:
        assert (await client.get("/api/v1/runs")).status_code == 200


async def test_a_misspelt_require_api_key_is_refused(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIKI_REQUIRE_API_KEY", "ture")

    status, _, err = await aiki_server("--db", db_url, "--port", str(free_port()))

    assert status == 2
    assert "AIKI_REQUIRE_API_KEY must be 1 or 0" in err


# -- the Host an open server answers (DNS rebinding) -------------------------------------

REBOUND = "rebind.evil.example"
"""A domain an attacker's DNS points at 127.0.0.1: a browser sends it as `Host`."""


async def test_an_open_server_refuses_a_request_to_a_foreign_host(
    db_url: str, processes: LiveProcesses
) -> None:
    server = await processes.start_server(db_url, "--public-url", "https://aiki.example.com")
    start_body = {"workflow": "w", "version": "1"}

    async with httpx.AsyncClient(base_url=server.base_url) as client:
        for host in (REBOUND, f"{REBOUND}:{server.port}", "127.0.0.1.evil.example"):
            r = await client.post("/api/v1/runs", json=start_body, headers={"host": host})
            assert error_of(r, 403, "permission_denied") == {"host": host}
            assert "public URL" in r.json()["error"]["message"]
            # public paths too: the health check and webhook deliveries
            error_of(await client.get("/health", headers={"host": host}), 403, "permission_denied")
            r = await client.post(f"/api/v1/webhooks/{ULID()}", json={}, headers={"host": host})
            error_of(r, 403, "permission_denied")
        names = ("localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "[::1]", "aiki.example.com")
        for name in names:
            for host in (name, f"{name}:{server.port}"):
                r = await client.get("/api/v1/runs", headers={"host": host})
                assert r.status_code == 200, (host, r.text)
                assert r.json()["runs"] == []  # none of the refused starts wrote anything
        r = await client.post("/api/v1/runs", json=start_body, headers={"host": "aiki.example.com"})
        assert r.status_code == 201, r.text


async def test_a_server_with_api_keys_answers_any_host(
    db_url: str, processes: LiveProcesses
) -> None:
    status, out, err = await aiki_server("keys", "create", "--db", db_url, "--namespace", "ops")
    assert status == 0, err
    server = await processes.start_server(db_url)

    async with httpx.AsyncClient(base_url=server.base_url) as client:
        keyed = {"host": REBOUND, "authorization": f"Bearer {out.strip()}"}
        r = await client.post("/api/v1/runs", json={"workflow": "w", "version": "1"}, headers=keyed)
        assert r.status_code == 201, r.text
        assert_unauthenticated(
            await client.get("/api/v1/runs", headers={"host": REBOUND}), "Bearer"
        )
        assert (await client.get("/health", headers={"host": REBOUND})).status_code == 200
