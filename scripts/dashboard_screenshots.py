"""Take the dashboard's screenshots for the docs (docs/assets/dashboard-*.png).

    hatch run test:python scripts/dashboard_screenshots.py

Starts `aiki-server` on a temporary SQLite file, a worker of the browser tests'
workflows (tests/dashboard_app.py), a few runs in every state worth seeing, and
photographs the runs list, a run with its task timeline, sending it an event, and
the schedules, queues and workers pages in Debian's Chromium.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import anyio
from playwright.async_api import async_playwright

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel, RunStatus
from aiki_server.testing import server_process
from aiki_worker import Worker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dashboard_app import Order, audit_v1, orders_v1, refunds_v1  # noqa: E402 - after the path

ASSETS = ROOT / "docs" / "assets"
WAIT = timedelta(seconds=30)


async def main() -> None:
    """Make the runs, then the pictures."""
    quiet = ConsoleLogger(LogLevel.ERROR)
    with tempfile.TemporaryDirectory(prefix="aiki-shots-") as folder:
        async with (
            server_process(f"sqlite:///{folder}/aiki.db") as server,
            Client(server.base_url, logger=quiet) as client,
            Worker(client, [orders_v1, audit_v1, refunds_v1], logger=quiet),
        ):
            handles = []
            for n in range(1, 6):
                order = Order(order_id=f"o-{1000 + n}", amount=100 * n)
                handles.append(await orders_v1.start(client, order, reference_id=order.order_id))
            for handle in handles:
                await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
            await handles[1].cancel("customer changed their mind")
            await handles[2].wake()
            await handles[2].wait_for_status([RunStatus.COMPLETED], timeout=WAIT)
            await (await audit_v1.start(client, "2026-12-04")).wait_for_status(
                [RunStatus.FAILED], timeout=WAIT
            )
            refund = await refunds_v1.start(client, "o-1004")
            await refund.wait_for_status([RunStatus.AWAITING_EVENT], timeout=WAIT)
            await client.schedules.create("nightly-audit", audit_v1, "today", cron="0 3 * * *")
            hourly = await client.schedules.create(
                "hourly-audit", audit_v1, "this hour", every=timedelta(hours=1)
            )
            await client.schedules.pause(hourly.id)
            for n in range(3):  # a version no worker serves: they wait in their queue
                await audit_v1.start(client, f"2026-12-0{n + 1}", pool="eu")
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox"]
                )
                page = await browser.new_page(
                    viewport={"width": 1280, "height": 760}, device_scale_factor=1
                )
                await page.goto(server.base_url + "/")
                await page.screenshot(path=ASSETS / "dashboard-runs.png")
                await page.goto(f"{server.base_url}/runs/{handles[0].id}")
                await page.screenshot(path=ASSETS / "dashboard-run.png", full_page=True)
                await page.get_by_role("button", name="Cancel", exact=True).click()
                await page.screenshot(path=ASSETS / "dashboard-cancel.png")
                await page.goto(f"{server.base_url}/runs/{refund.id}")
                await page.get_by_role("button", name="Send event").click()
                await page.get_by_label("Event name").fill("approved")
                await page.get_by_label("Data (JSON)").fill('{"by": "ann"}')
                await page.screenshot(path=ASSETS / "dashboard-event.png")
                for name in ("schedules", "queues", "workers"):
                    await page.goto(f"{server.base_url}/{name}")
                    await page.screenshot(path=ASSETS / f"dashboard-{name}.png")
                await browser.close()


if __name__ == "__main__":
    anyio.run(main)
