"""Takes the README's screenshots of the web inbox: docs/inbox.png and docs/detail.png at a
desktop's size, docs/inbox-phone.png and docs/detail-phone.png at a phone's (390x844).

Run from the repository root (needs Debian's chromium at /usr/bin/chromium):

    PYTHONPATH=. .venv/bin/python docs/screenshots.py

It starts a real broker with the demo exchange, has two agents make calls the policy holds,
signs in as an approver in headless Chromium and photographs the inbox and one call.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
from playwright.async_api import async_playwright, expect

from broker.proxy.auth.api_keys import AgentCredential
from tests.e2e.harness import running_broker
from tests.web.support import PASSWORDS, ApprovalFeed, web_settings
from tests.web.test_inbox_browser import CHROMIUM, CHROMIUM_ARGS

DOCS = Path(__file__).resolve().parent
REBALANCER_KEY = "key-rebalancer-0003"
CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("trader", "place_order", {"symbol": "ETHUSD", "side": "sell", "quantity": 12, "price": 3150}),
    ("trader", "binance_us_cust_cancel_order", {"order_id": "ord-1001"}),
    ("rebalancer", "place_order", {"symbol": "BTCUSD", "side": "buy", "quantity": 25, "price": 90000}),
]


async def main() -> None:
    with tempfile.TemporaryDirectory() as state:
        rebalancer = AgentCredential("rebalancer", hashlib.sha256(REBALANCER_KEY.encode()).hexdigest())
        settings = web_settings(Path(state))
        settings = replace(settings, credentials={**settings.credentials, "rebalancer": rebalancer})
        async with running_broker(settings) as running:
            feed = ApprovalFeed()
            running.broker.approvals.add_listener(feed)
            with anyio.fail_after(60):
                async with anyio.create_task_group() as agents, running.approver("alice") as api:
                    opened = []
                    for agent, tool, arguments in CALLS:
                        key = REBALANCER_KEY if agent == "rebalancer" else None
                        client = running.client(agent, key=key)
                        agents.start_soon(_call, client, tool, arguments)
                        opened.append(await feed.wait_for(lambda item, a=arguments: item.arguments == a))
                    await _photograph(running.url, opened[-1].id)
                    for approval in opened:
                        await api.post(f"/api/approvals/{approval.id}/deny", json={"reason": "screenshot"})


async def _call(client: Any, tool: str, arguments: dict[str, Any]) -> None:
    async with client:
        await client.call_tool(tool, arguments)


async def _photograph(url: str, approval_id: str) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(
                base_url=url,
                viewport={"width": 1280, "height": 560},
                device_scale_factor=1,
                timezone_id="Europe/Berlin",
            )
            page = await context.new_page()
            await page.goto("/")
            await page.get_by_label("User name").fill("alice")
            await page.get_by_label("Password").fill(PASSWORDS["alice"])
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.locator("tr[data-approval-id]")).to_have_count(len(CALLS))
            await expect(page.locator("html[data-stream=open]")).to_have_count(1)
            await page.screenshot(path=str(DOCS / "inbox.png"))
            await page.goto(f"/approvals/{approval_id}")
            await page.get_by_label("Reason").fill("within today's limit")
            await page.set_viewport_size({"width": 1280, "height": 800})
            await page.screenshot(path=str(DOCS / "detail.png"), full_page=True)
            cookies = await context.cookies()
            phone = await browser.new_context(
                base_url=url,
                viewport={"width": 390, "height": 844},
                device_scale_factor=1,
                is_mobile=True,
                has_touch=True,
                timezone_id="Europe/Berlin",
            )
            await phone.add_cookies(cookies)
            page = await phone.new_page()
            await page.goto("/")
            await expect(page.locator("html[data-stream=open]")).to_have_count(1)
            await page.screenshot(path=str(DOCS / "inbox-phone.png"))
            await page.goto(f"/approvals/{approval_id}")
            await expect(page.locator("html[data-stream=open]")).to_have_count(1)
            await page.get_by_label("Reason").fill("within today's limit")
            await page.screenshot(path=str(DOCS / "detail-phone.png"))
        finally:
            await browser.close()


if __name__ == "__main__":
    anyio.run(main)
