"""What a live update does to a page the approver is reading, in headless Chromium: another
approver's vote shows in the quorum progress, and a call arriving above the rows a phone user has
scrolled to leaves those rows where they were and says that it came."""

from __future__ import annotations

import anyio
from playwright.async_api import Browser, expect

from tests.e2e.harness import RunningBroker
from tests.web import test_inbox_browser as shared
from tests.web.support import hold, order

# The browser module's fixtures (a broker and a Chromium for this module) and its skip rule.
pytestmark = shared.pytestmark
anyio_backend = shared.anyio_backend
running = shared.running
browser = shared.browser


async def test_another_approvers_vote_shows_in_the_quorum_progress_without_a_reload(
    browser: Browser, running: RunningBroker
) -> None:
    approval = await hold(running, order(3001), quorum=2)
    context = await browser.new_context(base_url=running.url)
    context.set_default_timeout(shared.WAIT_MS)
    try:
        with anyio.fail_after(30):
            page = await shared.sign_in(context, "alice", path=f"/approvals/{approval.id}")
            await shared.live(page)
            progress = page.locator(".quorum")
            await expect(progress).to_have_text("0 of 2 approvals")
            await page.evaluate("window.__sameDocument = true")
            async with running.approver("bob") as bob:
                voted = await bob.post(f"/api/approvals/{approval.id}/approve")
                assert voted.status_code == 200, voted.text
            await expect(page.locator(".trail")).to_contain_text("bob")
            await expect(progress).to_have_text("1 of 2 approvals: bob")
            assert await page.evaluate("window.__sameDocument") is True
            await expect(page.locator("[data-status-badge]")).to_have_text("pending")
    finally:
        await context.close()
