"""A long argument on a phone-sized screen: folded to its start until "show all" is clicked."""

from __future__ import annotations

import anyio
import pytest
from playwright.async_api import Browser, expect

from tests.e2e.harness import RunningBroker
from tests.web import test_inbox_browser as shared
from tests.web.support import hold

# The browser module's fixtures (a broker and a Chromium for this module) and its skip rule.
pytestmark = shared.pytestmark
anyio_backend = shared.anyio_backend
running = shared.running
browser = shared.browser

MEMO = "".join(f"paragraph {n}: the desk confirmed this order by phone.\n" for n in range(100))


async def test_a_long_value_is_folded_until_show_all_is_clicked(
    browser: Browser, running: RunningBroker
) -> None:
    approval = await hold(running, {"symbol": "ETHUSD", "memo": MEMO, "quantity": 77})
    context = await browser.new_context(base_url=running.url, viewport={"width": 390, "height": 844})
    context.set_default_timeout(shared.WAIT_MS)
    try:
        with anyio.fail_after(30):
            page = await shared.sign_in(context, "alice", path=f"/approvals/{approval.id}")
            memo = page.locator('[data-field="memo"]')
            full = memo.locator("pre.full")
            await expect(memo.locator("pre.preview")).to_be_visible()
            await expect(full).to_be_hidden()
            await memo.get_by_text(f"show all {len(MEMO):,} characters").click()
            await expect(full).to_be_visible()
            assert await full.text_content() == MEMO
            fields = await page.locator(".call-field").evaluate_all(
                "nodes => nodes.map(n => n.dataset.field)"
            )
            assert fields == ["quantity", "symbol", "memo"]
    finally:
        await context.close()


# Each size holds its own order (a different quantity), not the other size's open approval.
SIZES = {"phone": ({"width": 390, "height": 844}, 78), "desktop": ({"width": 1280, "height": 800}, 79)}


@pytest.mark.parametrize("size", SIZES)
async def test_a_live_update_keeps_what_the_approver_opened_typed_and_focused(
    browser: Browser, running: RunningBroker, size: str
) -> None:
    # Two approvals are needed, so bob's yes is a vote: the panel re-renders with one more audit
    # row while alice is still at work on it.
    viewport, quantity = SIZES[size]
    approval = await hold(
        running, {"symbol": "ETHUSD", "memo": MEMO, "quantity": quantity}, quorum=2, editable=("quantity",)
    )
    context = await browser.new_context(base_url=running.url, viewport=viewport)
    context.set_default_timeout(shared.WAIT_MS)
    try:
        with anyio.fail_after(30):
            page = await shared.sign_in(context, "alice", path=f"/approvals/{approval.id}")
            await shared.live(page)
            await page.evaluate("window.__sameDocument = true")
            full = page.locator('[data-field="memo"] pre.full')
            await page.get_by_text(f"show all {len(MEMO):,} characters").click()
            await expect(full).to_be_visible()
            await page.locator("#edit-quantity").fill("12")
            reason = page.locator("#reason")
            await reason.fill("half a thought")
            await reason.press("Home")
            trail = page.locator(".trail tbody tr")
            rows = await trail.count()
            # Reading the trail at the foot of the page, below the opened memo.
            await trail.last.scroll_into_view_if_needed()
            scrolled = await page.evaluate("window.scrollY")
            assert scrolled > 0
            async with running.approver("bob") as bob:
                voted = await bob.post(f"/api/approvals/{approval.id}/approve")
                assert voted.status_code == 200, voted.text
            await expect(trail).to_have_count(rows + 1)
            assert await page.evaluate("window.__sameDocument") is True
            await expect(full).to_be_visible()
            await expect(reason).to_have_value("half a thought")
            await expect(reason).to_be_focused()
            assert await reason.evaluate("node => [node.selectionStart, node.selectionEnd]") == [0, 0]
            await expect(page.locator("#edit-quantity")).to_have_value("12")
            assert await page.evaluate("window.scrollY") == scrolled
            await page.keyboard.type("checked, ")
            await expect(reason).to_have_value("checked, half a thought")
    finally:
        await context.close()
