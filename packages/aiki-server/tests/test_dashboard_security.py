"""The dashboard under attack: sessions, CSRF tokens, namespaces, escaping, redirects, `Host`.

Each test drives the app in process with the cookies a browser would keep, on both
databases; the browser tests (the repository's `tests/test_dashboard.py`) show the
same pages working in Chromium.
"""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx

from aiki_server._api_keys import revoke_key
from server_api import START_MS, client_with, create_schedule, new_key, start

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi import FastAPI

    from server_api import Harness

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@asynccontextmanager
async def browser(app: FastAPI, host: str = "aiki") -> AsyncIterator[httpx.AsyncClient]:
    """A client on the dashboard that keeps its cookies, as a browser does."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=f"http://{host}"
    ) as client:
        yield client


def csrf_of(page: httpx.Response) -> str:
    match = _CSRF.search(page.text)
    assert match is not None, page.text
    return match[1]


async def log_in(client: httpx.AsyncClient, key: str, next_: str = "/") -> httpx.Response:
    form = await client.get("/login")
    assert form.status_code == 200, form.text
    return await client.post("/login", data={"csrf": csrf_of(form), "key": key, "next": next_})


async def test_a_logged_in_key_sees_every_page_of_its_namespace(harness: Harness) -> None:
    key = await new_key(harness.app, "team-a")
    async with client_with(harness.app, key.key) as api:
        await create_schedule(api)
    async with browser(harness.app) as page:
        assert (await log_in(page, key.key)).status_code == 303
        for path in ("/", "/workers", "/queues", "/schedules"):
            answer = await page.get(path)
            assert answer.status_code == 200, (path, answer.text)
        schedules = await page.get("/schedules")
        assert "nightly" in schedules.text


async def test_a_schedule_of_another_namespace_cannot_be_paused(harness: Harness) -> None:
    key_a = await new_key(harness.app, "team-a")
    key_b = await new_key(harness.app, "team-b")
    async with client_with(harness.app, key_a.key) as api:
        schedule = await create_schedule(api)
        async with browser(harness.app) as page:
            await log_in(page, key_b.key)
            token = csrf_of(await page.get("/"))
            answer = await page.post(f"/schedules/{schedule['id']}/pause", data={"csrf": token})
            assert answer.status_code == 404, answer.text
        assert (await api.get(f"/schedules/{schedule['id']}")).json()["paused"] is False


async def test_a_run_of_another_namespace_is_not_found_nor_cancelled(harness: Harness) -> None:
    key_a = await new_key(harness.app, "team-a")
    key_b = await new_key(harness.app, "team-b")
    async with client_with(harness.app, key_a.key) as api:
        run = await start(api)
        async with browser(harness.app) as page:
            await log_in(page, key_b.key)
            assert (await page.get(f"/runs/{run['id']}")).status_code == 404
            token = csrf_of(await page.get("/"))
            answer = await page.post(f"/runs/{run['id']}/cancel", data={"csrf": token})
            assert answer.status_code == 404
            listing = await page.get("/")
            assert run["id"] not in listing.text
        assert (await api.get(f"/runs/{run['id']}")).json()["status"] == "queued"


async def test_a_csrf_token_works_for_its_own_session_only(harness: Harness) -> None:
    key = await new_key(harness.app, "team-a")
    async with client_with(harness.app, key.key) as api:
        run = await start(api)
    async with browser(harness.app) as mine, browser(harness.app) as theirs:
        await log_in(mine, key.key)
        await log_in(theirs, key.key)
        stolen = csrf_of(await theirs.get("/"))
        refused = await mine.post(f"/runs/{run['id']}/cancel", data={"csrf": stolen})
        assert refused.status_code == 403
        refused = await mine.post(f"/runs/{run['id']}/cancel", data={})
        assert refused.status_code == 403
        assert (await mine.get(f"/runs/{run['id']}/cancel")).status_code in (404, 405)
        async with client_with(harness.app, key.key) as api:
            assert (await api.get(f"/runs/{run['id']}")).json()["status"] == "queued"


async def test_a_forged_or_pre_login_cookie_opens_nothing(harness: Harness) -> None:
    key = await new_key(harness.app, "team-a")
    async with browser(harness.app) as page:
        await page.get("/login")  # a session without a key
        answer = await page.get("/")
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/login")
        cookie = page.cookies["aiki_session"]
        body, _, signature = cookie.rpartition(".")
        async with browser(harness.app) as forger:
            forged = {"cookie": f"aiki_session={body}x.{signature}"}
            assert (await forger.get("/", headers=forged)).status_code == 303
        await log_in(page, key.key)
        assert page.cookies["aiki_session"] != cookie  # a new session, not the fixed one


async def test_a_revoked_key_ends_its_session(harness: Harness) -> None:
    key = await new_key(harness.app, "team-a")
    async with browser(harness.app) as page:
        await log_in(page, key.key)
        assert (await page.get("/")).status_code == 200
        await revoke_key(harness.app.state.db, key.id, START_MS + 1)
        harness.app.state.api_keys.forget()
        answer = await page.get("/")
        assert answer.status_code == 303


async def test_login_goes_back_to_this_server_only(harness: Harness) -> None:
    key = await new_key(harness.app, "team-a")
    for target, expected in [
        ("/runs/x?status=failed", "/runs/x?status=failed"),
        ("//evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/\t/evil.example", "/"),
        ("/%5Cevil.example", "/%5Cevil.example"),
        ("javascript:alert(1)", "/"),
    ]:
        async with browser(harness.app) as page:
            answer = await log_in(page, key.key, target)
            assert answer.status_code == 303
            assert answer.headers["location"] == expected, target


async def test_what_users_wrote_is_escaped(harness: Harness) -> None:
    hostile = '<script>alert("x")</script>'
    async with client_with(harness.app, None) as api:
        run = await start(api, reference_id=hostile, input={"k": hostile})
        r = await api.post(f"/runs/{run['id']}/events", json={"name": "go", "data": hostile})
        assert r.status_code < 300, r.text
    async with browser(harness.app) as page:
        for path in ("/", f"/runs/{run['id']}", "/queues", f"/?reference_id={hostile}"):
            answer = await page.get(path)
            assert answer.status_code == 200, answer.text
            assert "<script>alert" not in answer.text, path
        token = csrf_of(await page.get(f"/runs/{run['id']}"))
        sent_back = await page.post(
            f"/runs/{run['id']}/event",
            data={"csrf": token, "name": '"><script>alert(1)</script>', "data": hostile},
        )
        assert sent_back.status_code == 400
        assert "<script>alert" not in sent_back.text
        missing = await page.get("/runs/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        assert "<script>alert" not in missing.text


async def test_a_server_without_keys_answers_its_own_names_only(harness: Harness) -> None:
    paths = ("/", "/login", "/workers", "/queues", "/schedules", "/runs/x", "/static/dashboard.js")
    for path in paths:
        async with browser(harness.app, host="evil.example") as page:
            answer = await page.get(path)
            assert answer.status_code == 403, path
