"""The web inbox in a real headless Chromium against a real broker, agent and upstream.

One broker and one browser serve the whole module (each test gets a fresh browser context,
so fresh cookies); every test tells its own approvals apart by the order's price.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright, expect

from tests.e2e.harness import RunningBroker, running_broker
from tests.web.support import PASSWORDS, ApprovalFeed, order, text_of, web_settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 10_000

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
]


@asynccontextmanager
async def launched_chromium() -> AsyncIterator[Browser]:
    """Debian's headless Chromium, closed on the way out (the browser fixtures of every inbox test)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningBroker]:
    async with running_broker(web_settings(tmp_path_factory.mktemp("web-browser"))) as broker:
        yield broker


@pytest.fixture(scope="module")
def feed(running: RunningBroker) -> ApprovalFeed:
    feed = ApprovalFeed()
    running.broker.approvals.add_listener(feed)
    return feed


@pytest.fixture(scope="module")
async def browser(running: RunningBroker) -> AsyncIterator[Browser]:
    # Depends on `running` so the browser (and its open event streams) goes away before the broker.
    async with launched_chromium() as browser:
        yield browser


@pytest.fixture
async def context(browser: Browser, running: RunningBroker) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(base_url=running.url)
    context.set_default_timeout(WAIT_MS)
    try:
        yield context
    finally:
        await context.close()


async def sign_in(context: BrowserContext, user: str, *, path: str = "/") -> Page:
    page = await context.new_page()
    await page.goto(path)
    await page.get_by_label("User name").fill(user)
    await page.get_by_label("Password").fill(PASSWORDS[user])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator(".who")).to_have_text(user, timeout=WAIT_MS)
    return page


async def live(page: Page) -> None:
    """Waits until the page's event stream is open and the page has caught up with what changed
    before, so later changes must arrive over it and nothing re-renders what a test types."""
    await expect(page.locator("html[data-stream=open]")).to_have_count(1, timeout=WAIT_MS)


def row(page: Page, approval_id: str) -> Any:
    return page.locator(f'tr[data-approval-id="{approval_id}"]')


async def test_a_wrong_password_is_refused_and_the_right_one_signs_in(context: BrowserContext) -> None:
    with anyio.fail_after(30):
        page = await context.new_page()
        await page.goto("/history")
        await expect(page).to_have_url(re.compile(r"/login\?next=%2Fhistory$"))
        await page.get_by_label("User name").fill("alice")
        await page.get_by_label("Password").fill("not-her-password")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
        await expect(page.locator(".who")).to_have_count(0)
        await page.get_by_label("Password").fill(PASSWORDS["alice"])
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="History")).to_be_visible()
        await expect(page.locator(".who")).to_have_text("alice")


async def test_a_held_call_appears_live_and_approving_it_releases_the_call(
    context: BrowserContext, running: RunningBroker, feed: ApprovalFeed
) -> None:
    with anyio.fail_after(30):
        page = await sign_in(context, "alice")
        await live(page)
        await page.evaluate("window.__sameDocument = true")
        outcome: dict[str, Any] = {}
        async with running.client() as client, anyio.create_task_group() as tasks:

            async def agent() -> None:
                outcome["result"] = await client.call_tool("place_order", order(1001))

            tasks.start_soon(agent)
            approval = await feed.wait_for(lambda item: item.arguments.get("price") == 1001)
            listed = row(page, approval.id)
            await expect(listed).to_be_visible(timeout=WAIT_MS)
            await expect(listed.locator(".agent")).to_have_text("trader")
            await expect(listed.locator(".tool")).to_have_text("place_order")
            await expect(listed.locator(".countdown")).to_have_text(re.compile(r"^\d+m \d\ds$"))
            assert await page.evaluate("window.__sameDocument") is True  # no reload happened

            await listed.locator("a.tool").click()
            await expect(page.locator("pre.json").first).to_contain_text('"quantity": 10')
            await expect(page.get_by_text("orders above 5 units need a second pair of eyes")).to_be_visible()
            await expect(page.locator("dd.hash")).to_have_text(approval.arguments_hash)
            await live(page)
            await page.get_by_label("Reason").fill("checked with the desk")
            await page.get_by_role("button", name="Approve").click()
            await expect(page.locator(".ending")).to_contain_text("Approved by alice via web")
        result = outcome["result"]
        assert not result.is_error
        assert result.structured_content["quantity"] == 10 and result.structured_content["price"] == 1001
        # The page follows the release to its end without a reload.
        await expect(page.locator("[data-status-badge]")).to_have_text("completed", timeout=WAIT_MS)
        await expect(page.locator(".trail")).to_contain_text("released")


async def test_denying_with_a_reason_tells_the_agent_why(
    context: BrowserContext, running: RunningBroker, feed: ApprovalFeed
) -> None:
    with anyio.fail_after(30):
        outcome: dict[str, Any] = {}
        async with running.client() as client, anyio.create_task_group() as tasks:

            async def agent() -> None:
                outcome["result"] = await client.call_tool("place_order", order(1002))

            tasks.start_soon(agent)
            approval = await feed.wait_for(lambda item: item.arguments.get("price") == 1002)
            page = await sign_in(context, "bob", path=f"/approvals/{approval.id}")
            await live(page)
            await page.get_by_label("Reason").fill("too large today")
            await page.get_by_role("button", name="Deny").click()
            await expect(page.locator(".ending")).to_contain_text("Denied by bob via web")
            await expect(page.locator("blockquote.reason")).to_have_text("too large today")
        result = outcome["result"]
        assert result.is_error
        assert "too large today" in text_of(result) and "bob" in text_of(result)


async def test_markup_in_arguments_and_reasons_is_shown_as_text_and_never_runs(
    context: BrowserContext, running: RunningBroker, feed: ApprovalFeed
) -> None:
    payload = "<script>window.__xss=1</script>"
    reason = '<img src=x onerror="window.__xss=2">'
    with anyio.fail_after(30):
        page = await sign_in(context, "alice")
        await live(page)
        async with running.client() as client, anyio.create_task_group() as tasks:
            tasks.start_soon(client.call_tool, "place_order", order(1003, symbol=payload))
            approval = await feed.wait_for(lambda item: item.arguments.get("price") == 1003)
            await expect(row(page, approval.id).locator(".args")).to_contain_text(payload, timeout=WAIT_MS)
            await page.goto(f"/approvals/{approval.id}")
            await live(page)
            await expect(page.locator("pre.json").first).to_contain_text(f'"symbol": "{payload}"')
            await page.get_by_label("Reason").fill(reason)
            await page.get_by_role("button", name="Deny").click()
            await expect(page.locator("blockquote.reason")).to_have_text(reason)
        await page.goto("/history")
        await expect(row(page, approval.id).locator(".args")).to_contain_text(payload)
        assert await page.evaluate("typeof window.__xss") == "undefined"
        assert await page.locator("img[src=x]").count() == 0


async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    context: BrowserContext, running: RunningBroker, feed: ApprovalFeed
) -> None:
    with anyio.fail_after(30):
        page = await sign_in(context, "alice")
        async with (
            running.client() as client,
            anyio.create_task_group() as tasks,
            running.approver("alice") as api,
        ):
            tasks.start_soon(client.call_tool, "place_order", order(1004))
            approval = await feed.wait_for(lambda item: item.arguments.get("price") == 1004)
            missing = await page.request.post(f"/approvals/{approval.id}/approve", form={"reason": "x"})
            assert missing.status == 403
            assert "security token is missing or out of date" in await missing.text()
            wrong = await page.request.post(
                f"/approvals/{approval.id}/approve", form={"reason": "x", "csrf_token": "guessed"}
            )
            assert wrong.status == 403
            shown = (await api.get(f"/api/approvals/{approval.id}")).json()
            assert shown["status"] == "pending"
            assert [entry["event"] for entry in shown["audit"]] == ["requested"]
            await api.post(f"/api/approvals/{approval.id}/deny", json={"reason": "test over"})


async def test_someone_who_is_not_an_approver_for_the_rule_sees_no_buttons_and_cannot_decide(
    context: BrowserContext, running: RunningBroker, feed: ApprovalFeed
) -> None:
    with anyio.fail_after(30):
        page = await sign_in(context, "mallory")
        await live(page)
        async with (
            running.client() as client,
            anyio.create_task_group() as tasks,
            running.approver("alice") as api,
        ):
            tasks.start_soon(client.call_tool, "place_order", order(1005))
            approval = await feed.wait_for(lambda item: item.arguments.get("price") == 1005)
            await expect(row(page, approval.id).get_by_text("view only")).to_be_visible(timeout=WAIT_MS)
            await page.goto(f"/approvals/{approval.id}")
            await expect(page.locator("[data-refusal]")).to_contain_text(
                "mallory is not an approver for rule rules[2] 'place_order'"
            )
            await expect(page.get_by_role("button", name="Approve")).to_have_count(0)
            await expect(page.get_by_role("button", name="Deny")).to_have_count(0)
            token = await page.locator("input[name=csrf_token]").first.input_value()
            forced = await page.request.post(
                f"/approvals/{approval.id}/approve", form={"csrf_token": token, "reason": "let me"}
            )
            assert forced.status == 403
            assert "not an approver" in await forced.text()
            assert (await api.get(f"/api/approvals/{approval.id}")).json()["status"] == "pending"
            await api.post(f"/api/approvals/{approval.id}/deny", json={"reason": "test over"})


async def test_deciding_a_call_someone_already_decided_says_who_decided_it(
    context: BrowserContext, running: RunningBroker, feed: ApprovalFeed
) -> None:
    async def no_live_updates(route: Route) -> None:
        await route.abort()

    with anyio.fail_after(30):
        page = await sign_in(context, "alice")
        # A page whose event stream is down keeps showing buttons for a call that is already decided.
        await page.route("**/events", no_live_updates)
        async with (
            running.client() as client,
            anyio.create_task_group() as tasks,
            running.approver("bob") as bob,
        ):
            tasks.start_soon(client.call_tool, "place_order", order(1006))
            approval = await feed.wait_for(lambda item: item.arguments.get("price") == 1006)
            await page.goto(f"/approvals/{approval.id}")
            await expect(page.get_by_role("button", name="Approve")).to_be_visible()
            assert (await bob.post(f"/api/approvals/{approval.id}/approve")).status_code == 200
            await page.get_by_role("button", name="Approve").click()
            await expect(page.get_by_role("alert")).to_contain_text(
                re.compile(r"already approved by bob via api at \S")
            )
            await expect(page.get_by_role("button", name="Approve")).to_have_count(0)
        audit = [record.actor for record in await running.broker.store.audit_trail(approval.id)]
        assert "alice" not in audit


async def test_a_decision_made_elsewhere_removes_the_row_from_open_pages_live(
    context: BrowserContext, running: RunningBroker, feed: ApprovalFeed
) -> None:
    with anyio.fail_after(30):
        page = await sign_in(context, "alice")
        await live(page)
        async with (
            running.client() as client,
            anyio.create_task_group() as tasks,
            running.approver("bob") as bob,
        ):
            tasks.start_soon(client.call_tool, "place_order", order(1007))
            approval = await feed.wait_for(lambda item: item.arguments.get("price") == 1007)
            listed = row(page, approval.id)
            await expect(listed).to_be_visible(timeout=WAIT_MS)
            count = page.locator("[data-pending-count]")
            before = int(await count.inner_text())
            await page.evaluate("window.__sameDocument = true")
            assert (
                await bob.post(f"/api/approvals/{approval.id}/deny", json={"reason": "no"})
            ).status_code == 200
            await expect(listed).to_have_count(0, timeout=WAIT_MS)
            await expect(count).to_have_text(str(before - 1))
            assert await page.evaluate("window.__sameDocument") is True
