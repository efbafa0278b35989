"""The inbox at a desktop's and a phone's size in headless Chromium: nothing scrolls sideways,
a call is decided at phone size without scrolling, a quorum's progress wraps inside its card,
keyboard shortcuts decide on a desktop, and an opted-in browser shows a notification when a call
arrives (and none before opting in)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from broker.approvals.quorum import progress_text
from tests.e2e.harness import RunningBroker, running_broker
from tests.web import support
from tests.web.support import ApprovalFeed, order, web_settings
from tests.web.test_inbox_browser import CHROMIUM, WAIT_MS, launched_chromium, live, row, sign_in

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]

# Records every notification the page constructs, then lets the browser's own class make it.
# The count is also written on <html data-notified>, so a test waits for it with a locator:
# `wait_for_function` polls by evaluating a string in the page, which the inbox's CSP (no
# 'unsafe-eval') refuses whenever the first check does not already pass.
RECORD_NOTIFICATIONS = """
window.__notified = [];
if ("Notification" in window) {
  window.Notification = new Proxy(window.Notification, {
    construct(target, args) {
      window.__notified.push({ title: args[0], body: (args[1] || {}).body });
      document.documentElement.dataset.notified = String(window.__notified.length);
      return Reflect.construct(target, args);
    },
  });
}
"""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningBroker]:
    async with running_broker(web_settings(tmp_path_factory.mktemp("web-layout"))) as broker:
        yield broker


@pytest.fixture(scope="module")
def feed(running: RunningBroker) -> ApprovalFeed:
    feed = ApprovalFeed()
    running.broker.approvals.add_listener(feed)
    return feed


@pytest.fixture(scope="module")
async def browser(running: RunningBroker) -> AsyncIterator[Browser]:
    async with launched_chromium() as browser:
        yield browser


async def new_context(
    browser: Browser, running: RunningBroker, size: dict[str, int], **extra: Any
) -> BrowserContext:
    context = await browser.new_context(base_url=running.url, viewport=size, **extra)
    context.set_default_timeout(WAIT_MS)
    return context


# Cells, links, buttons and fields that stick out past the window's right edge, even where a
# card's `overflow: hidden` keeps the page itself from scrolling (clipped is unusable too).
OUTSIDE = """
Array.from(document.querySelectorAll("th, td, a, button, input, select, textarea, h1, p"))
  .filter((element) => element.getClientRects().length > 0 && !element.closest("dialog"))
  .filter((element) => element.getBoundingClientRect().right > window.innerWidth + 0.5)
  .map((element) => element.tagName + "." + element.className + ": " + element.textContent.trim().slice(0, 30))
"""


async def fits_sideways(page: Page) -> None:
    widths = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"{page.url} is {widths[0]} px wide in a {widths[1]} px window"
    # A phone browser widens its window to a page too wide for it, so the check above would pass.
    viewport = page.viewport_size
    assert viewport is not None and widths[1] == viewport["width"], f"{page.url} widened the window: {widths}"
    assert await page.evaluate(OUTSIDE) == [], page.url


async def hold(
    running: RunningBroker, feed: ApprovalFeed, tasks: Any, client: Any, price: float, **extra: Any
) -> Any:
    tasks.start_soon(client.call_tool, "place_order", order(price, **extra))
    return await feed.wait_for(lambda item: item.arguments.get("price") == price)


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
async def test_no_page_scrolls_sideways(
    browser: Browser, running: RunningBroker, feed: ApprovalFeed, size: dict[str, int]
) -> None:
    with anyio.fail_after(60):
        phone = size == PHONE
        context = await new_context(browser, running, size, is_mobile=phone, has_touch=phone)
        try:
            async with (
                running.client() as client,
                anyio.create_task_group() as tasks,
                running.approver("bob") as bob,
            ):
                long_note = "a-very-long-unbroken-argument-value-" * 8
                held = await hold(running, feed, tasks, client, 2001 + size["width"], note=long_note)
                done = await hold(running, feed, tasks, client, 2002 + size["width"])
                await bob.post(f"/api/approvals/{done.id}/deny", json={"reason": "no " * 60})
                page = await context.new_page()
                await page.goto("/login")
                await fits_sideways(page)
                page = await sign_in(context, "alice")
                await expect(row(page, held.id)).to_be_visible()
                for path in (
                    "/",
                    "/?q=place",
                    f"/approvals/{held.id}",
                    f"/approvals/{done.id}",
                    "/history",
                    "/tools",
                ):
                    await page.goto(path)
                    await expect(page.locator("h1").first).to_be_visible()
                    await fits_sideways(page)
                await bob.post(f"/api/approvals/{held.id}/deny", json={"reason": "cleanup"})
        finally:
            await context.close()


async def test_a_call_is_decided_at_phone_size_without_scrolling(
    browser: Browser, running: RunningBroker, feed: ApprovalFeed
) -> None:
    with anyio.fail_after(60):
        context = await new_context(browser, running, PHONE, is_mobile=True, has_touch=True)
        try:
            async with running.client() as client, anyio.create_task_group() as tasks:
                outcome: dict[str, Any] = {}

                async def agent() -> None:
                    outcome["result"] = await client.call_tool("place_order", order(2101))

                tasks.start_soon(agent)
                approval = await feed.wait_for(lambda item: item.arguments.get("price") == 2101)
                page = await sign_in(context, "alice")
                await row(page, approval.id).locator("a.button").click()
                await live(page)
                approve = page.get_by_role("button", name="Approve")
                deny = page.get_by_role("button", name="Deny")
                for button in (approve, deny):
                    box = await button.bounding_box()
                    assert box is not None
                    assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"], box
                    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
                trail = await page.locator(".trail-card").bounding_box()
                approve_box = await approve.bounding_box()
                assert trail is not None and approve_box is not None and approve_box["y"] < trail["y"]
                assert await page.evaluate("window.scrollY") == 0
                await fits_sideways(page)
                await page.get_by_label("Reason").fill("fine from my phone")
                await approve.tap()
                await expect(page.locator(".ending")).to_contain_text("Approved by alice via web")
            assert not outcome["result"].is_error
        finally:
            await context.close()


# One unbroken group name wider than a phone's status card, as a directory's group names can be.
LONG_GROUP = "@EmeaFixedIncomeStructuredProductsOvernightRiskControlDesk"


async def test_quorum_progress_wraps_inside_the_status_card_at_phone_size(
    browser: Browser, running: RunningBroker
) -> None:
    approval = await support.hold(running, order(2151), quorum=2, quorum_from=("@trading-leads", LONG_GROUP))
    with anyio.fail_after(60):
        async with running.approver("bob") as bob:
            voted = await bob.post(f"/api/approvals/{approval.id}/approve")
        assert voted.status_code == 200, voted.text
        stored = await running.broker.approvals.store.get(approval.id)
        assert stored is not None
        expected = progress_text(stored)
        assert expected == f"1 of 2 approvals: bob; still needs one of {LONG_GROUP}"
        context = await new_context(browser, running, PHONE, is_mobile=True, has_touch=True)
        try:
            page = await sign_in(context, "alice", path=f"/approvals/{approval.id}")
            progress = page.locator("[data-quorum-progress]")
            await expect(progress).to_have_text(expected)
            await fits_sideways(page)
            # A mobile browser zooms out to fit a too-wide page, so the window must still be the phone's.
            assert await page.evaluate("window.innerWidth") == PHONE["width"]
            card = await page.locator(".status-card").bounding_box()
            box = await progress.bounding_box()
            assert card is not None and box is not None
            assert box["x"] >= card["x"] and box["x"] + box["width"] <= card["x"] + card["width"], (box, card)
            line = await progress.evaluate("(element) => parseFloat(getComputedStyle(element).lineHeight)")
            assert box["height"] >= 2 * line, "the progress should wrap onto more lines, not stick out"
            # The inbox row says the same, and wraps inside the phone's width too.
            await page.goto("/")
            listed = row(page, approval.id).locator("[data-quorum-progress]")
            await expect(listed).to_have_text(expected)
            await fits_sideways(page)
            box = await listed.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
        finally:
            await context.close()
        # The module shares one broker: leave no pending call behind for the other tests' lists.
        async with running.approver("alice") as alice:
            denied = await alice.post(f"/api/approvals/{approval.id}/deny", json={"reason": "cleanup"})
        assert denied.status_code == 200, denied.text


async def test_keyboard_shortcuts_pick_a_call_and_approve_it_after_asking(
    browser: Browser, running: RunningBroker, feed: ApprovalFeed
) -> None:
    with anyio.fail_after(60):
        context = await new_context(browser, running, DESKTOP)
        try:
            async with running.client() as client, anyio.create_task_group() as tasks:
                approval = await hold(running, feed, tasks, client, 2201)
                page = await sign_in(context, "alice", path=f"/?q={approval.id}")
                await live(page)
                asked: list[str] = []

                async def answer(dialog: Any) -> None:
                    asked.append(dialog.message)
                    await (dialog.dismiss() if len(asked) == 1 else dialog.accept())

                page.on("dialog", answer)
                await page.keyboard.press("?")
                await expect(page.locator("dialog#shortcuts")).to_be_visible()
                await page.keyboard.press("Escape")
                await expect(page.locator("dialog#shortcuts")).to_be_hidden()
                await page.keyboard.press("/")
                assert await page.evaluate("document.activeElement.name") == "q"
                await page.keyboard.press("Escape")
                await page.keyboard.press("j")
                await expect(row(page, approval.id)).to_have_class(re.compile(r"\bselected\b"))
                await page.keyboard.press("Enter")
                await expect(page).to_have_url(f"{running.url}/approvals/{approval.id}")
                await live(page)
                # Typing in the reason never triggers a shortcut.
                await page.keyboard.press("r")
                await page.keyboard.type("all good")
                await expect(page.get_by_label("Reason")).to_have_value("all good")
                assert asked == []
                await page.keyboard.press("Escape")
                await page.keyboard.press("a")  # dismissed: nothing happens
                await expect(page.locator("[data-status-badge]")).to_have_text("pending")
                await page.keyboard.press("a")
                await expect(page.locator(".ending")).to_contain_text("Approved by alice via web")
                assert asked == ["Approve place_order?", "Approve place_order?"]
                await expect(page.locator("blockquote.reason")).to_have_text("all good")
        finally:
            await context.close()


async def test_a_notification_appears_for_a_new_call_only_after_opting_in(
    browser: Browser, running: RunningBroker, feed: ApprovalFeed
) -> None:
    with anyio.fail_after(60):
        context = await new_context(browser, running, DESKTOP)
        await context.grant_permissions(["notifications"], origin=running.url)
        await context.add_init_script(RECORD_NOTIFICATIONS)
        try:
            async with (
                running.client() as client,
                anyio.create_task_group() as tasks,
                running.approver("bob") as bob,
            ):
                page = await sign_in(context, "alice", path="/history")
                button = page.locator("[data-notify]")
                await expect(button).to_have_text("Notify me")
                # Without consent nothing is shown (the history page does not even listen).
                first = await hold(running, feed, tasks, client, 2301)
                await page.goto("/")
                await live(page)
                await expect(row(page, first.id)).to_be_visible()
                assert await page.evaluate("window.__notified") == []

                await page.goto("/history")
                await button.click()
                await expect(button).to_have_text("Notifications on")
                await live(page)
                second = await hold(running, feed, tasks, client, 2302)
                await expect(page.locator("html")).to_have_attribute("data-notified", "1")
                [shown] = await page.evaluate("window.__notified")
                assert shown["title"] == "Approval needed: place_order"
                assert shown["body"] == "trader wants to call place_order"
                # A decision is not a new call: no second notification.
                await bob.post(f"/api/approvals/{second.id}/deny", json={"reason": "no"})
                await bob.post(f"/api/approvals/{first.id}/deny", json={"reason": "no"})
                third = await hold(running, feed, tasks, client, 2303)
                await expect(page.locator("html")).to_have_attribute("data-notified", "2")
                assert len(await page.evaluate("window.__notified")) == 2
                await bob.post(f"/api/approvals/{third.id}/deny", json={"reason": "no"})
                # Turning it off again is remembered.
                await button.click()
                await expect(button).to_have_text("Notify me")
        finally:
            await context.close()
