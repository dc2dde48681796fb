"""Signed webhooks: minting (fenced like every worker write) and delivery by a signed POST."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx
import pytest
from pydantic import BaseModel, TypeAdapter

from aiki_client import Client
from aiki_core import RunId
from aiki_core.wire import CreateWebhookRequest
from aiki_server import ServerSettings
from aiki_server._cli import _parser
from aiki_server._notify import WakeHub
from aiki_server._storage._open import open_database
from aiki_server._webhooks import stored_secret
from server_api import START_MS, claim_one, error_of, get_run, iso, start, transition

if TYPE_CHECKING:
    from aiki_server._storage._database import Database
    from server_api import Harness, HarnessFactory

HOUR_MS = 3_600_000
SECRET = "s" * 32
DENIED = "permission_denied"


class Payment(BaseModel):
    txn: str
    amount: int


PAYMENT_SCHEMA = TypeAdapter(Payment).json_schema()
PAID = {"txn": "t-9", "amount": 5}


async def held_run(client: httpx.AsyncClient) -> tuple[str, int]:
    """Start a run and claim it; its id and the claim's revision."""
    run = await start(client)
    claimed = await claim_one(client)
    return run["id"], claimed["run"]["revision"]


async def mint(
    client: httpx.AsyncClient,
    run_id: str,
    revision: int,
    *,
    expires_in: int = HOUR_MS,
    schema: dict[str, Any] = PAYMENT_SCHEMA,
) -> httpx.Response:
    return await client.post(
        f"/runs/{run_id}/webhooks",
        json={"revision": revision, "event": "paid", "expires_in": expires_in, "schema": schema},
    )


async def minted(client: httpx.AsyncClient, run_id: str, revision: int) -> dict[str, Any]:
    r = await mint(client, run_id, revision)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def suspend_on_paid(client: httpx.AsyncClient, run_id: str, revision: int) -> None:
    r = await transition(
        client,
        run_id,
        revision,
        {"kind": "suspend", "waits": [{"kind": "event", "name": "paid", "occurrence": 0}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["run"]["status"] == "awaiting_event"


async def awaiting_run_with_webhook(client: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    """A run awaiting `paid`, and the webhook minted for it before it suspended."""
    run_id, revision = await held_run(client)
    hook = await minted(client, run_id, revision)
    await suspend_on_paid(client, run_id, revision)
    return run_id, hook


def with_query(url: str, **changes: str | None) -> str:
    """`url` with query parameters replaced (or dropped, for `None`)."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return parts._replace(query=urlencode(query)).geturl()


async def snapshot(client: httpx.AsyncClient, run_id: str) -> tuple[Any, ...]:
    """What a refused delivery must leave as it was."""
    run = await get_run(client, run_id)
    return run["status"], run["revision"], run["events"], run["event_waits"], run["history"]


async def stored_webhooks(h: Harness) -> int:
    async with h.app.state.db.reader() as tx:
        row = await tx.fetchrow("SELECT count(*) AS n FROM webhooks")
    return int(row["n"])


# -- minting ------------------------------------------------------------------------------


async def test_mint_answers_a_signed_path_and_url(harness: Harness) -> None:
    run_id, revision = await held_run(harness.client)
    hook = await minted(harness.client, run_id, revision)
    assert set(hook) == {"webhook_id", "path", "url", "expires_at"}
    assert hook["expires_at"] == iso(START_MS + HOUR_MS)
    match = re.fullmatch(
        r"/api/v1/webhooks/([0-9A-Z]{26})\?expires=(\d+)&signature=([A-Za-z0-9_-]{43})",
        hook["path"],
    )
    assert match is not None, hook["path"]
    assert match[1] == hook["webhook_id"]
    assert int(match[2]) == START_MS + HOUR_MS
    # the default public URL is the base URL the worker reached the server on
    assert hook["url"] == "http://aiki" + hook["path"]
    # each mint is a webhook of its own
    again = await minted(harness.client, run_id, revision)
    assert again["webhook_id"] != hook["webhook_id"]
    assert await stored_webhooks(harness) == 2


async def test_mint_uses_the_configured_public_url(make_harness: HarnessFactory) -> None:
    async with make_harness(public_url="https://hooks.example.com/aiki/") as h:
        run_id, revision = await held_run(h.client)
        hook = await minted(h.client, run_id, revision)
    assert hook["path"].startswith("/api/v1/webhooks/")
    assert hook["url"] == "https://hooks.example.com/aiki" + hook["path"]


async def test_mint_is_fenced_by_the_claim(harness: Harness) -> None:
    run_id, revision = await held_run(harness.client)
    details = error_of(await mint(harness.client, run_id, revision + 1), 409, "stale_revision")
    assert details["current_revision"] == revision
    await suspend_on_paid(harness.client, run_id, revision)
    details = error_of(await mint(harness.client, run_id, revision), 409, "illegal_transition")
    assert details["current"] == "awaiting_event"
    error_of(await mint(harness.client, "01NOSUCHRUN", 0), 404, "not_found")
    assert await stored_webhooks(harness) == 0


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"expires_in": 0}, "expires_in"),
        ({"expires_in": 90 * 24 * HOUR_MS + 1}, "expires_in"),
        ({"schema": {"type": "nope"}}, "not a valid JSON Schema"),
        ({"schema": {"$ref": "https://example.com/payment.json"}}, "refers outside itself"),
    ],
)
async def test_mint_refuses_bad_expiry_and_schema(
    harness: Harness, change: dict[str, Any], problem: str
) -> None:
    run_id, revision = await held_run(harness.client)
    r = await mint(harness.client, run_id, revision, **change)
    error_of(r, 422, "payload_validation")
    assert problem in r.json()["error"]["message"]
    assert await stored_webhooks(harness) == 0


# -- delivery -----------------------------------------------------------------------------


async def test_a_signed_post_delivers_the_event_and_requeues_the_run(harness: Harness) -> None:
    run_id, hook = await awaiting_run_with_webhook(harness.client)
    r = await harness.client.post(hook["url"], json=PAID)
    assert r.status_code == 200, r.text
    event_id = r.json()["event_id"]
    assert r.json()["duplicate"] is False

    got = await get_run(harness.client, run_id)
    assert got["status"] == "queued"
    assert [(e["id"], e["name"], e["data"]) for e in got["events"]] == [(event_id, "paid", PAID)]
    assert [(w["status"], w["event_id"]) for w in got["event_waits"]] == [("received", event_id)]
    again = await claim_one(harness.client)
    assert again["event_waits"][0]["event_id"] == event_id


async def test_a_repeated_idempotency_key_is_a_duplicate(harness: Harness) -> None:
    run_id, hook = await awaiting_run_with_webhook(harness.client)
    headers = {"Idempotency-Key": "psp-42"}
    first = await harness.client.post(hook["url"], json=PAID, headers=headers)
    assert first.status_code == 200, first.text
    again = await harness.client.post(hook["url"], json=PAID, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json() == {"event_id": first.json()["event_id"], "duplicate": True}
    got = await get_run(harness.client, run_id)
    assert [e["reference_id"] for e in got["events"]] == ["psp-42"]


def _flip_last(text: str) -> str:
    return text[:-1] + ("A" if text[-1] != "A" else "B")


@pytest.mark.parametrize(
    ("tamper", "status", "code"),
    [
        (lambda u, q: with_query(u, signature=_flip_last(q["signature"])), 403, DENIED),
        (lambda u, q: with_query(u, expires=str(int(q["expires"]) + 1)), 403, DENIED),
        (lambda u, q: with_query(u, expires="0" + q["expires"]), 403, DENIED),
        (lambda u, q: with_query(u, signature=None), 401, "unauthenticated"),
        (lambda u, q: with_query(u, expires=None), 401, "unauthenticated"),
        (lambda u, q: u.replace(q["id"], "01JZZZZZZZZZZZZZZZZZZZZZZZ"), 403, DENIED),
    ],
    ids=["signature", "expiry", "expiry-spelling", "no-signature", "no-expiry", "unknown-id"],
)
async def test_a_tampered_url_is_refused_and_changes_nothing(
    harness: Harness, tamper: Any, status: int, code: str
) -> None:
    run_id, hook = await awaiting_run_with_webhook(harness.client)
    query = {k: v[0] for k, v in parse_qs(urlsplit(hook["url"]).query).items()}
    url = tamper(hook["url"], {**query, "id": hook["webhook_id"]})
    assert url != hook["url"]
    before = await snapshot(harness.client, run_id)
    error_of(await harness.client.post(url, json=PAID), status, code)
    assert await snapshot(harness.client, run_id) == before


async def test_another_webhooks_signature_is_refused(harness: Harness) -> None:
    run_id, hook = await awaiting_run_with_webhook(harness.client)
    other_run, other_revision = await held_run(harness.client)
    other = await minted(harness.client, other_run, other_revision)
    # the other webhook's valid query on this webhook's id
    url = hook["url"].split("?")[0] + "?" + other["url"].split("?")[1]
    before = await snapshot(harness.client, run_id)
    details = error_of(await harness.client.post(url, json=PAID), 403, "permission_denied")
    assert details == {"webhook_id": hook["webhook_id"]}
    assert await snapshot(harness.client, run_id) == before


async def test_an_unknown_id_and_a_wrong_signature_answer_alike(harness: Harness) -> None:
    _, hook = await awaiting_run_with_webhook(harness.client)
    query = hook["url"].split("?")[1]
    wrong = await harness.client.post(
        with_query(hook["url"], signature=_flip_last(parse_qs(query)["signature"][0])), json=PAID
    )
    unknown_id = "01JZZZZZZZZZZZZZZZZZZZZZZZ"
    unknown = await harness.client.post(f"http://aiki/api/v1/webhooks/{unknown_id}?{query}")
    assert error_of(wrong, 403, "permission_denied") == {"webhook_id": hook["webhook_id"]}
    assert error_of(unknown, 403, "permission_denied") == {"webhook_id": unknown_id}
    assert wrong.json()["error"]["message"] == unknown.json()["error"]["message"]


async def test_an_expired_url_is_refused_and_changes_nothing(harness: Harness) -> None:
    run_id, hook = await awaiting_run_with_webhook(harness.client)
    harness.advance(HOUR_MS)
    before = await snapshot(harness.client, run_id)
    r = await harness.client.post(hook["url"], json=PAID)
    error_of(r, 403, "permission_denied")
    assert "expired" in r.json()["error"]["message"]
    assert await snapshot(harness.client, run_id) == before


async def test_a_url_just_before_its_expiry_delivers(harness: Harness) -> None:
    run_id, hook = await awaiting_run_with_webhook(harness.client)
    harness.advance(HOUR_MS - 1)
    r = await harness.client.post(hook["url"], json=PAID)
    assert r.status_code == 200, r.text
    assert (await get_run(harness.client, run_id))["status"] == "queued"


@pytest.mark.parametrize(
    ("body", "locations"),
    [
        ({"txn": "t-9"}, [["body"]]),
        ({"txn": 9, "amount": "five"}, [["body", "amount"], ["body", "txn"]]),
        (None, [["body"]]),
        ([PAID], [["body"]]),
    ],
    ids=["missing-field", "wrong-types", "no-body", "an-array"],
)
async def test_a_body_that_fails_the_schema_is_422_and_changes_nothing(
    harness: Harness, body: Any, locations: list[list[str]]
) -> None:
    run_id, hook = await awaiting_run_with_webhook(harness.client)
    before = await snapshot(harness.client, run_id)
    r = await harness.client.post(hook["url"], json=body)
    details = error_of(r, 422, "payload_validation")
    assert [e["loc"] for e in details["errors"]] == locations
    assert all(e["msg"] for e in details["errors"])
    assert await snapshot(harness.client, run_id) == before


async def test_a_post_to_an_ended_run_is_a_conflict(harness: Harness) -> None:
    run_id, revision = await held_run(harness.client)
    hook = await minted(harness.client, run_id, revision)
    r = await transition(harness.client, run_id, revision, {"kind": "complete", "result": 1})
    assert r.status_code == 200, r.text
    error_of(await harness.client.post(hook["url"], json=PAID), 409, "conflict")
    assert (await get_run(harness.client, run_id))["events"] == []


async def test_an_event_posted_before_the_wait_is_kept_for_it(harness: Harness) -> None:
    run_id, revision = await held_run(harness.client)
    hook = await minted(harness.client, run_id, revision)
    r = await harness.client.post(hook["url"], json=PAID)
    assert r.status_code == 200, r.text
    # the wait that comes later takes it at once: the run goes straight back to the queue
    r = await transition(
        harness.client,
        run_id,
        revision,
        {"kind": "suspend", "waits": [{"kind": "event", "name": "paid", "occurrence": 0}]},
    )
    assert r.json()["run"]["status"] == "queued"


# -- the secret ---------------------------------------------------------------------------


async def test_the_generated_secret_survives_a_restart(make_harness: HarnessFactory) -> None:
    async with make_harness() as first:
        run_id, hook = await awaiting_run_with_webhook(first.client)
    # a server signing with another secret refuses the URL: the signature depends on it
    async with make_harness(webhook_secret=SECRET) as other:
        error_of(await other.client.post(hook["url"], json=PAID), 403, "permission_denied")
    async with make_harness() as restarted:
        r = await restarted.client.post(hook["url"], json=PAID)
        assert r.status_code == 200, r.text
        assert (await get_run(restarted.client, run_id))["status"] == "queued"


async def test_a_configured_secret_signs_across_restarts(make_harness: HarnessFactory) -> None:
    async with make_harness(webhook_secret=SECRET) as first:
        run_id, hook = await awaiting_run_with_webhook(first.client)
    # the generated secret of the database is another one
    async with make_harness() as generated:
        error_of(await generated.client.post(hook["url"], json=PAID), 403, "permission_denied")
    async with make_harness(webhook_secret=SECRET) as again:
        assert (await again.client.post(hook["url"], json=PAID)).status_code == 200


def test_a_short_configured_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        ServerSettings(webhook_secret="too-short")


# -- the client ---------------------------------------------------------------------------


async def test_the_client_mints_and_the_full_url_delivers(harness: Harness) -> None:
    run_id, revision = await held_run(harness.client)
    transport = httpx.ASGITransport(app=harness.app)
    async with Client("http://aiki", transport=transport) as client:
        request = CreateWebhookRequest(
            revision=revision, event="paid", expires_in=timedelta(hours=1), schema=PAYMENT_SCHEMA
        )
        hook = await client.create_webhook(RunId(run_id), request)
    await suspend_on_paid(harness.client, run_id, revision)
    async with httpx.AsyncClient(transport=transport) as outsider:
        r = await outsider.post(hook.url, json=PAID)
    assert r.status_code == 200, r.text
    assert (await get_run(harness.client, run_id))["status"] == "queued"


async def test_replicas_racing_to_generate_the_secret_agree(db_url: str) -> None:
    # replicas share a database only on PostgreSQL; on SQLite, concurrent calls of one server
    replicas = 1 if db_url.startswith("sqlite") else 2
    databases = [open_database(db_url, WakeHub()) for _ in range(replicas)]
    for db in databases:
        await db.open()
    try:
        await databases[0].migrate()
        found: list[bytes] = []

        async def generate(db: Database) -> None:
            found.append(await stored_secret(db, START_MS))

        async with anyio.create_task_group() as tg:
            for db in databases * (6 // replicas):
                tg.start_soon(generate, db)
    finally:
        for db in databases:
            await db.close()
    assert len(found) == 6
    assert len(found[0]) == 32
    assert set(found) == {found[0]}


def test_the_cli_takes_the_secret_and_the_public_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIKI_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("AIKI_PUBLIC_URL", "https://env.example.com")
    args = _parser().parse_args(["--public-url", "https://cli.example.com"])
    assert (args.webhook_secret, args.public_url) == (SECRET, "https://cli.example.com")
    monkeypatch.delenv("AIKI_WEBHOOK_SECRET")
    monkeypatch.delenv("AIKI_PUBLIC_URL")
    args = _parser().parse_args([])
    assert (args.webhook_secret, args.public_url) == (None, None)


async def test_openapi_describes_both_routes(server: httpx.AsyncClient) -> None:
    spec = (await server.get("http://aiki/openapi.json")).json()
    mint_op = spec["paths"]["/api/v1/runs/{run_id}/webhooks"]["post"]
    assert mint_op["tags"] == ["workers"]
    assert "201" in mint_op["responses"]
    deliver_op = spec["paths"]["/api/v1/webhooks/{webhook_id}"]["post"]
    assert deliver_op["tags"] == ["webhooks"]
    assert {"200", "401", "403", "409", "422"} <= set(deliver_op["responses"])
    assert {p["name"] for p in deliver_op["parameters"]} == {
        "webhook_id",
        "expires",
        "signature",
        "idempotency-key",
    }
    request_schema = spec["components"]["schemas"]["CreateWebhookRequest"]
    assert set(request_schema["required"]) == {"revision", "event", "expires_in", "schema"}
