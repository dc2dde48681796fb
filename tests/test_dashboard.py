"""The dashboard in a real browser: Debian's Chromium, driven by Playwright.

A real server process (`aiki_server.testing.server_process`) on SQLite and on
PostgreSQL, a worker in the test process, and a browser that clicks through the
pages as a person would: the runs list, a filter, a run with its task timeline,
a cancel confirmed in its dialog, an event sent from a run's page, the workers,
the queues, a schedule paused; with API keys, a login, and a key of another
namespace refused.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from aiki_client import Client
from aiki_core import RunStatus
from aiki_server.testing import server_process
from aiki_worker import Worker
from dashboard_app import Order, audit_v1, orders_v1, refunds_v1, trips_v1
from e2e_support import QUIET

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiki_core.sdk import WorkflowRunHandle

CHROMIUM = Path(os.environ.get("AIKI_CHROMIUM", "/usr/bin/chromium"))
"""Debian's Chromium (`apt-get install chromium`; `.ci/run` installs it)."""
HAS_CHROMIUM = CHROMIUM.exists()
WAIT = timedelta(seconds=30)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium for the test."""
    if not HAS_CHROMIUM:
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            await launched.close()


async def sleeping_order(client: Client, order_id: str) -> WorkflowRunHandle[dict[str, str]]:
    """An order run, past its retried charge, asleep for its hour of cool-off."""
    order = Order(order_id=order_id, amount=42)
    handle = await orders_v1.start(client, order, reference_id=order_id)
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    return handle


async def test_list_filter_run_and_cancel(db_url: str, browser: Browser) -> None:
    async with (
        server_process(db_url) as server,
        Client(server.base_url, logger=QUIET) as client,
        Worker(client, [orders_v1, audit_v1], logger=QUIET),
    ):
        first = await sleeping_order(client, "o-1001")
        second = await sleeping_order(client, "o-1002")
        audit = await audit_v1.start(client, "2026-12-04")
        await audit.wait_for_status([RunStatus.FAILED], timeout=WAIT)

        page = await browser.new_page()
        await page.goto(server.base_url + "/")
        await expect(page.locator("table.runs tbody tr")).to_have_count(3)
        await expect(page.locator(".count.c-sleeping .n")).to_have_text("2")
        await expect(page.locator(".count.c-failed .n")).to_have_text("1")

        # a filter: the reference id of one order
        await page.get_by_label("Reference id").fill("o-1002")
        await page.get_by_role("button", name="Filter").click()
        await expect(page).to_have_url(re.compile(r"reference_id=o-1002"))
        rows = page.locator("table.runs tbody tr")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text(second.id)

        # a status count is a filter too, and keeps the others
        await page.goto(server.base_url + "/")
        await page.locator(".count.c-failed").click()
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("nightly-audit")

        # list -> run: what it waits for, and the retried charge on the timeline
        await page.goto(server.base_url + "/?status=sleeping")
        await page.get_by_role("link", name=first.id).click()
        await expect(page).to_have_url(f"{server.base_url}/runs/{first.id}")
        await expect(page.locator(".runhead .badge").first).to_have_text("sleeping")
        await expect(page.locator(".waiting")).to_contain_text("sleeping until")
        lane = page.locator(".lane", has_text="charge-card")
        await expect(lane.locator(".bar")).to_have_count(2)
        await expect(lane.locator(".bar.b-failed")).to_have_count(1)
        await expect(lane).to_contain_text("2 attempts")
        await expect(page.locator("pre.json").first).to_contain_text('"order_id": "o-1001"')

        # cancel, confirmed in its dialog: "Keep it" changes nothing
        await page.get_by_role("button", name="Cancel", exact=True).click()
        dialog = page.locator("dialog#confirm-cancel")
        await expect(dialog).to_be_visible()
        await dialog.get_by_role("button", name="Keep it").click()
        await expect(dialog).to_be_hidden()
        assert await first.status() == RunStatus.SLEEPING

        await page.get_by_role("button", name="Cancel", exact=True).click()
        await dialog.get_by_role("button", name="Yes, cancel it").click()
        await expect(page.locator(".flash.ok")).to_have_text("Run cancelled.")
        # it ran: the worker runs its cleanup, then it ends
        assert await first.wait_for_status([RunStatus.CANCELLED], timeout=WAIT) is (
            RunStatus.CANCELLED
        )
        await page.reload()
        await expect(page.locator(".runhead .badge").first).to_have_text("cancelled")
        assert await second.status() == RunStatus.SLEEPING


async def test_a_run_cleaning_up_says_so_and_a_second_cancel_ends_it(
    db_url: str, browser: Browser
) -> None:
    async with (
        server_process(db_url) as server,
        Client(server.base_url, logger=QUIET) as client,
        Worker(client, [trips_v1], logger=QUIET),
    ):
        trip = await trips_v1.start(client, "Lisbon")
        await trip.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
        await trip.cancel("plans changed")  # its on_cancel hook takes an hour
        await trip.wait_for_status([RunStatus.CLEANING_UP], timeout=WAIT)

        page = await browser.new_page()
        await page.goto(server.base_url + "/")
        await expect(page.locator(".count.c-cleaning_up .n")).to_have_text("1")
        await expect(page.locator("table.runs tbody tr").first.locator(".badge")).to_have_text(
            "cleaning up"
        )
        await page.get_by_role("link", name=trip.id).click()
        await expect(page.locator(".runhead .badge").first).to_have_text("cleaning up")
        await expect(page.locator("dt", has_text="Cleanup deadline")).to_be_visible()
        await expect(page.locator(".history")).to_contain_text("plans changed; cleaning up")

        # cancelling it again ends it at once, its cleanup unfinished: the dialog says so
        await page.get_by_role("button", name="Cancel", exact=True).click()
        dialog = page.locator("dialog#confirm-cancel")
        await expect(dialog).to_contain_text("without finishing its cleanup")
        await dialog.get_by_role("button", name="Yes, cancel it").click()
        await expect(page.locator(".flash.ok")).to_have_text("Run cancelled.")
        assert await trip.status() is RunStatus.CANCELLED
        await page.reload()
        await expect(page.locator(".runhead .badge").first).to_have_text("cancelled")


async def test_send_event_from_the_run_page(db_url: str, browser: Browser) -> None:
    async with (
        server_process(db_url) as server,
        Client(server.base_url, logger=QUIET) as client,
        Worker(client, [refunds_v1], logger=QUIET),
    ):
        run = await refunds_v1.start(client, "o-4001")
        await run.wait_for_status([RunStatus.AWAITING_EVENT], timeout=WAIT)
        page = await browser.new_page()
        await page.goto(f"{server.base_url}/runs/{run.id}")
        await expect(page.locator(".waiting")).to_contain_text("waiting for event 'approved'")

        # bad JSON: the form comes back with the problem, and nothing is sent
        await page.get_by_role("button", name="Send event").click()
        dialog = page.locator("dialog#send-event")
        await expect(dialog).to_be_visible()
        await dialog.get_by_label("Event name").fill("approved")
        await dialog.get_by_label("Data (JSON)").fill('{"by": ann}')
        await dialog.get_by_role("button", name="Yes, send it").click()
        await expect(dialog).to_be_visible()
        await expect(dialog.locator(".flash.error")).to_contain_text(
            "Nothing was sent. The data is not valid JSON"
        )
        await expect(dialog.get_by_label("Data (JSON)")).to_have_value('{"by": ann}')
        async with httpx.AsyncClient() as api:
            detail = (await api.get(f"{server.base_url}/api/v1/runs/{run.id}")).json()
        assert detail["events"] == []
        assert await run.status() == RunStatus.AWAITING_EVENT

        # good JSON: the run gets it and completes
        await dialog.get_by_label("Data (JSON)").fill('{"by": "ann"}')
        await dialog.get_by_role("button", name="Yes, send it").click()
        await expect(page.locator(".flash.ok")).to_have_text("Event sent.")
        assert await run.result(timeout=WAIT) == "refund of o-4001 approved by ann"
        await page.reload()
        await expect(page.locator(".runhead .badge").first).to_have_text("completed")
        await expect(page.locator("pre.json", has_text='"by": "ann"')).to_have_count(1)


async def test_workers_page_shows_a_live_worker(db_url: str, browser: Browser) -> None:
    async with (
        server_process(db_url) as server,
        Client(server.base_url, logger=QUIET) as client,
        Worker(client, [orders_v1, audit_v1], logger=QUIET) as worker,
    ):
        await sleeping_order(client, "o-5001")  # the worker has claimed: the server knows it
        page = await browser.new_page()
        await page.goto(server.base_url + "/")
        await page.get_by_role("link", name="Workers").click()
        await expect(page).to_have_url(server.base_url + "/workers")
        row = page.locator("table.workers tbody tr", has_text=worker.id)
        await expect(row).to_have_count(1)
        await expect(row.locator(".badge")).to_have_text("live")
        await expect(row.locator("ul.serves li", has_text="order-processing")).to_contain_text(
            "1.0.0"
        )
        await expect(row.locator("ul.serves li", has_text="nightly-audit")).to_contain_text("2.1.0")


async def test_queues_page_highlights_a_version_nobody_serves(
    db_url: str, browser: Browser
) -> None:
    async with (
        server_process(db_url) as server,
        Client(server.base_url, logger=QUIET) as client,
        Worker(client, [orders_v1], logger=QUIET),
    ):
        await sleeping_order(client, "o-6001")  # served: claimed at once, not queued
        for day in ("2026-12-03", "2026-12-04"):
            await audit_v1.start(client, day)  # no worker serves nightly-audit 2.1.0
        page = await browser.new_page()
        await page.goto(server.base_url + "/")
        await page.get_by_role("link", name="Queues").click()
        await expect(page).to_have_url(server.base_url + "/queues")
        rows = page.locator("table.queues tbody tr")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_class("unserved")
        await expect(rows.first).to_contain_text("nightly-audit")
        await expect(rows.first.locator("td.num").first).to_have_text("2")
        await expect(rows.first.locator(".badge")).to_have_text("no live worker")
        await expect(page.locator(".flash.warn")).to_contain_text("1 queue no live worker serves")

        # the runs page finds the unserved runs themselves, not the served sleeping one
        await page.goto(server.base_url + "/")
        await page.get_by_label("Unserved only").check()
        await page.get_by_role("button", name="Filter").click()
        listed = page.locator("table.runs tbody tr")
        await expect(listed).to_have_count(2)
        for n in range(2):
            await expect(listed.nth(n)).to_contain_text("nightly-audit")


async def test_pause_a_schedule_from_its_page(db_url: str, browser: Browser) -> None:
    async with server_process(db_url) as server, Client(server.base_url, logger=QUIET) as client:
        schedule = await client.schedules.create(
            "nightly-audit", audit_v1, "2026-12-04", cron="0 3 * * *"
        )
        page = await browser.new_page()
        await page.goto(server.base_url + "/")
        await page.get_by_role("link", name="Schedules").click()
        await expect(page).to_have_url(server.base_url + "/schedules")
        row = page.locator(f'tr[data-schedule="{schedule.id}"]')
        await expect(row.locator(".badge")).to_have_text("active")
        assert schedule.next_fire_at is not None
        await expect(row).to_contain_text(schedule.next_fire_at.strftime("%Y-%m-%d 03:00:00"))
        await expect(row).to_contain_text("0 3 * * *")

        # pause, confirmed in its dialog: "Keep it" changes nothing
        await row.get_by_role("button", name="Pause").click()
        dialog = page.locator(f"dialog#pause-{schedule.id}")
        await dialog.get_by_role("button", name="Keep it").click()
        await expect(dialog).to_be_hidden()
        assert not (await client.schedules.get(schedule.id)).paused

        await row.get_by_role("button", name="Pause").click()
        await dialog.get_by_role("button", name="Yes, pause it").click()
        await expect(page.locator(".flash.ok")).to_have_text("Schedule paused.")
        await expect(row.locator(".badge")).to_have_text("paused")
        assert (await client.schedules.get(schedule.id)).paused

        await row.get_by_role("button", name="Resume").click()
        await (
            page.locator(f"dialog#resume-{schedule.id}")
            .get_by_role("button", name="Yes, resume it")
            .click()
        )
        await expect(page.locator(".flash.ok")).to_have_text("Schedule resumed.")
        assert not (await client.schedules.get(schedule.id)).paused


async def test_action_without_its_csrf_token_is_refused(db_url: str, browser: Browser) -> None:
    async with (
        server_process(db_url) as server,
        Client(server.base_url, logger=QUIET) as client,
        Worker(client, [orders_v1], logger=QUIET),
    ):
        run = await sleeping_order(client, "o-2001")
        page = await browser.new_page()
        await page.goto(f"{server.base_url}/runs/{run.id}")  # a session, with its token
        refused = await page.request.post(
            f"{server.base_url}/runs/{run.id}/cancel", form={"csrf": "forged"}
        )
        assert refused.status == 403
        # and no other site's form is answered without the session cookie at all
        async with httpx.AsyncClient() as other:
            response = await other.post(f"{server.base_url}/runs/{run.id}/cancel", data={})
        assert response.status_code == 403
        assert await run.status() == RunStatus.SLEEPING


async def login(page: Page, base_url: str, key: str) -> None:
    """Log in on the dashboard's login page with `key`."""
    await page.goto(base_url + "/")
    await expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Log in").click()


async def test_key_login_sees_its_namespace_only(db_url: str, browser: Browser) -> None:
    async with server_process(db_url) as server:
        key_a = await server.create_api_key("team-a")
        key_b = await server.create_api_key("team-b")
        async with (
            Client(server.base_url, api_key=key_a.key, logger=QUIET) as client_a,
            Worker(client_a, [orders_v1], logger=QUIET),
        ):
            run = await sleeping_order(client_a, "o-3001")

            page_a = await (await browser.new_context()).new_page()
            await page_a.goto(server.base_url + "/")
            await page_a.get_by_label("API key").fill("aiki_not_a_key")
            await page_a.get_by_role("button", name="Log in").click()
            await expect(page_a.locator(".flash.error")).to_contain_text("not valid")

            await login(page_a, server.base_url, key_a.key)
            await expect(page_a).to_have_url(server.base_url + "/")
            await expect(page_a.locator(".namespace")).to_have_text("team-a")
            await expect(page_a.locator("table.runs tbody tr")).to_have_count(1)
            cookie = next(c for c in await page_a.context.cookies() if c["name"] == "aiki_session")
            assert cookie["httpOnly"]
            assert cookie["sameSite"] == "Strict"
            assert key_a.key not in cookie["value"]

            # another namespace's key sees none of it, and may not act on it
            page_b = await (await browser.new_context()).new_page()
            await login(page_b, server.base_url, key_b.key)
            await expect(page_b.locator(".namespace")).to_have_text("team-b")
            await expect(page_b.locator(".empty")).to_have_text("No runs.")
            shown = await page_b.goto(f"{server.base_url}/runs/{run.id}")
            assert shown is not None
            assert shown.status == 404
            token = await page_b.locator('meta[name="csrf-token"]').get_attribute("content")
            assert token
            refused = await page_b.request.post(
                f"{server.base_url}/runs/{run.id}/cancel", form={"csrf": token}
            )
            assert refused.status == 404
            assert await run.status() == RunStatus.SLEEPING

            # its own key's session acts on it
            await page_a.goto(f"{server.base_url}/runs/{run.id}")
            await page_a.get_by_role("button", name="Cancel", exact=True).click()
            await (
                page_a.locator("dialog#confirm-cancel")
                .get_by_role("button", name="Yes, cancel it")
                .click()
            )
            await expect(page_a.locator(".runhead .badge").first).to_have_text("cancelled")

            # logging out ends the session
            await page_a.get_by_role("button", name="Log out").click()
            await expect(page_a).to_have_url(server.base_url + "/login")
            await page_a.goto(server.base_url + "/")
            await expect(page_a).to_have_url(re.compile(r"/login"))


async def test_a_run_held_by_its_concurrency_key_says_so(db_url: str, browser: Browser) -> None:
    async with (
        server_process(db_url) as server,
        httpx.AsyncClient(base_url=server.base_url + "/api/v1") as api,
    ):
        started = []
        for tenant in ("acme", "acme", "globex"):
            body = {
                "workflow": "tenant-report",
                "version": "1",
                "priority": 7,
                "concurrency": {"key": tenant, "limit": 1},
            }
            r = await api.post("/runs", json=body)
            assert r.status_code == 201, r.text
            started.append(r.json()["run"]["id"])
        claim = {
            "worker_id": "w",
            "capabilities": [{"workflow": "tenant-report", "version": "1"}],
            "max_runs": 10,
            "wait": 0,
        }
        r = await api.post("/claims", json=claim)
        assert r.status_code == 200, r.text
        # one run per key: acme's second waits for the first
        assert sorted(c["run"]["id"] for c in r.json()["runs"]) == sorted([started[0], started[2]])

        page = await browser.new_page()
        await page.goto(f"{server.base_url}/runs/{started[1]}")
        await expect(page.locator(".runhead .badge").first).to_have_text("queued")
        await expect(page.locator(".waiting")).to_contain_text(
            "waiting for concurrency key acme: 1 of 1 running"
        )
        facts = page.locator("dl.facts")
        await expect(facts.locator("div", has_text="Priority").locator("dd")).to_have_text("7")
        await facts.get_by_role("link", name="acme").click()

        # the key's runs, across their statuses, and none of globex's
        await expect(page).to_have_url(re.compile(r"concurrency_key=acme"))
        rows = page.locator("table.runs tbody tr")
        await expect(rows).to_have_count(2)
        await expect(rows.first).to_contain_text("priority 7")
        await expect(rows.first).to_contain_text("key acme")
        await expect(page.get_by_label("Concurrency key")).to_have_value("acme")
