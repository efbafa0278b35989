"""Single sign-on in a real headless Chromium: the inbox's button, the local authorization server's
login (auto-consent for the test user), the way back, and a held call approved through the
signed-on session reaching the agent, at desktop and phone sizes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from playwright.async_api import Browser, expect

from tests.authserver.server import AuthServer
from tests.e2e.harness import RunningBroker
from tests.web.sso_support import held_order, sso_broker
from tests.web.support import ApprovalFeed
from tests.web.test_inbox_browser import CHROMIUM, WAIT_MS, launched_chromium
from tests.web.test_inbox_layout_browser import DESKTOP, PHONE, fits_sideways

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def provider() -> Iterator[AuthServer]:
    with AuthServer() as server:
        # On before the broker's first discovery, which it keeps: sign-out goes through the provider.
        server.end_session.enabled = True
        yield server


@pytest.fixture(scope="module")
async def running(
    provider: AuthServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningBroker]:
    async with sso_broker(provider, tmp_path_factory.mktemp("sso-browser")) as broker:
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


@pytest.mark.parametrize(
    ("size", "extra", "price"),
    [(DESKTOP, {}, 4001), (PHONE, {"is_mobile": True, "has_touch": True}, 4002)],
    ids=["desktop", "phone"],
)
async def test_an_approver_signs_on_in_the_browser_and_approves_a_held_call(
    browser: Browser,
    running: RunningBroker,
    provider: AuthServer,
    feed: ApprovalFeed,
    size: dict[str, int],
    extra: dict[str, Any],
    price: int,
) -> None:
    provider.login_as = "alice"
    with anyio.fail_after(60):
        context = await browser.new_context(base_url=running.url, viewport=size, **extra)
        context.set_default_timeout(WAIT_MS)
        try:
            async with held_order(running, feed, price) as held:
                approval = held.approval
                assert approval is not None
                page = await context.new_page()
                await page.goto(f"/approvals/{approval.id}")
                await expect(page).to_have_url(re.compile(r"/login\?next="))
                await fits_sideways(page)
                await page.get_by_role("link", name="Sign in with Example SSO").click()
                # Out to the provider and back, landing on the call the approver was opening.
                await expect(page).to_have_url(f"{running.url}/approvals/{approval.id}")
                await expect(page.locator(".who")).to_have_text("alice")
                await fits_sideways(page)
                await page.get_by_label("Reason").fill("signed on and checked")
                await page.get_by_role("button", name="Approve").click()
                await expect(page.locator(".ending")).to_contain_text("alice")
            result = held.result
            assert not result.is_error and result.structured_content["price"] == price
        finally:
            await context.close()


async def test_signing_out_signs_out_at_the_provider_and_comes_back_to_the_sign_in_page(
    browser: Browser, running: RunningBroker, provider: AuthServer
) -> None:
    provider.login_as = "alice"
    with anyio.fail_after(60):
        context = await browser.new_context(base_url=running.url, viewport=PHONE)
        context.set_default_timeout(WAIT_MS)
        try:
            page = await context.new_page()
            await page.goto("/login?next=%2Fhistory")
            await page.get_by_role("link", name="Sign in with Example SSO").click()
            await expect(page).to_have_url(f"{running.url}/history")
            calls = len(provider.end_session.calls)
            await page.get_by_role("button", name="Sign out").click()
            await expect(page).to_have_url(f"{running.url}/login")
            await expect(page.get_by_role("link", name="Sign in with Example SSO")).to_be_visible()
            [call] = provider.end_session.calls[calls:]
            assert call.refusal is None and call.hint_sub == "alice"
            await page.goto("/history")
            await expect(page).to_have_url(re.compile(r"/login\?next="))
        finally:
            await context.close()


async def test_someone_the_broker_does_not_know_sees_why_and_gets_no_session(
    browser: Browser, running: RunningBroker, provider: AuthServer
) -> None:
    provider.login_as = "carol"
    with anyio.fail_after(60):
        context = await browser.new_context(base_url=running.url, viewport=DESKTOP)
        context.set_default_timeout(WAIT_MS)
        try:
            page = await context.new_page()
            await page.goto("/login")
            await page.get_by_role("link", name="Sign in with Example SSO").click()
            await expect(page.get_by_role("heading", name="Not an approver")).to_be_visible()
            await expect(
                page.get_by_text("carol@example.com is not an approver of this broker")
            ).to_be_visible()
            await page.goto("/")
            await expect(page).to_have_url(re.compile(r"/login"))
        finally:
            await context.close()
            provider.login_as = "alice"
