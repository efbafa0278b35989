"""A long argument on a phone-sized screen: folded to its start until "show all" is clicked."""

from __future__ import annotations

from datetime import timedelta

import anyio
from playwright.async_api import Browser, expect

from broker.approvals import NewApproval
from tests.e2e.harness import RunningBroker
from tests.web import test_inbox_browser as shared

# The browser module's fixtures (a broker and a Chromium for this module) and its skip rule.
pytestmark = shared.pytestmark
anyio_backend = shared.anyio_backend
running = shared.running
browser = shared.browser

MEMO = "".join(f"paragraph {n}: the desk confirmed this order by phone.\n" for n in range(100))


async def test_a_long_value_is_folded_until_show_all_is_clicked(
    browser: Browser, running: RunningBroker
) -> None:
    policy = running.broker.policy_file.holder.current
    approval, _ = await running.broker.approvals.open(
        NewApproval(
            agent="trader",
            server="exchange",
            tool="place_order",
            upstream_tool="place_order",
            arguments={"symbol": "ETHUSD", "memo": MEMO, "quantity": 77},
            policy_revision=policy.revision,
            rule="rules[2] 'place_order'",
            rule_reason="orders above 5 units need a second pair of eyes",
            timeout=timedelta(minutes=5),
        )
    )
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
