"""What a live update does to a page the approver is reading, in headless Chromium: another
approver's vote shows in the quorum progress, and a call arriving above the rows a phone user has
scrolled to leaves those rows where they were and says that it came."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from playwright.async_api import Browser, Page, expect

from tests.e2e.harness import RunningBroker
from tests.web import test_inbox_browser as shared
from tests.web.support import hold, order

# The browser module's fixtures (a broker and a Chromium for this module) and its skip rule.
pytestmark = shared.pytestmark
anyio_backend = shared.anyio_backend
running = shared.running
browser = shared.browser

PHONE = {"width": 390, "height": 844}
# Where the watched row is put on the screen, and how far it may drift (sub-pixel rounding).
WATCHED_TOP = 300
DRIFT_PX = 3


@asynccontextmanager
async def live_page(
    browser: Browser, running: RunningBroker, path: str, **context: Any
) -> AsyncIterator[Page]:
    """Alice's page at `path`, its event stream open, in a browser context of its own."""
    opened = await browser.new_context(base_url=running.url, **context)
    opened.set_default_timeout(shared.WAIT_MS)
    try:
        with anyio.fail_after(30):
            page = await shared.sign_in(opened, "alice", path=path)
            await shared.live(page)
            yield page
    finally:
        await opened.close()


async def test_another_approvers_vote_shows_in_the_quorum_progress_without_a_reload(
    browser: Browser, running: RunningBroker
) -> None:
    approval = await hold(running, order(3001), quorum=2)
    async with live_page(browser, running, f"/approvals/{approval.id}") as page:
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


async def top_of(page: Page, approval_id: str) -> float:
    box = await shared.row(page, approval_id).bounding_box()
    assert box is not None
    return float(box["y"])


async def test_a_call_arriving_above_a_scrolled_phone_list_leaves_the_rows_in_place_and_is_announced(
    browser: Browser, running: RunningBroker
) -> None:
    # An agent of its own, so the list shows only this test's calls.
    agent = "anchor-bot"
    held: list[Any] = [await hold(running, order(3100 + n), agent=agent) for n in range(10)]
    async with live_page(
        browser, running, f"/?agent={agent}", viewport=PHONE, is_mobile=True, has_touch=True
    ) as page:
        rows = page.locator("tr[data-approval-id]")
        await expect(rows).to_have_count(len(held))
        # Newest first: the approver has scrolled down to the sixth newest call.
        watched = held[-6].id
        await page.evaluate(f"window.scrollBy(0, {await top_of(page, watched) - WATCHED_TOP})")
        assert await page.evaluate("window.scrollY") > 0
        before = await top_of(page, watched)
        assert abs(before - WATCHED_TOP) <= DRIFT_PX
        notice = page.locator("[data-new-rows]")
        await expect(notice).to_be_hidden()
        await page.evaluate("window.__sameDocument = true")

        arrived = await hold(running, order(3199), agent=agent)
        await expect(rows).to_have_count(len(held) + 1)
        assert (await rows.first.get_attribute("data-approval-id")) == arrived.id
        after = await top_of(page, watched)
        assert abs(after - before) <= DRIFT_PX, f"the watched row moved from {before} to {after}"
        assert await page.evaluate("window.__sameDocument") is True

        await expect(notice).to_be_visible()
        await expect(notice).to_have_text("1 new call above")
        await notice.tap()
        await expect(notice).to_be_hidden()
        await expect(shared.row(page, arrived.id)).to_be_in_viewport()
