"""What an approver reads about a held call on the web and through the API: arguments in reading
order, multi-line and folded values, the tool's rating, the condition that held it, who waits,
and the last decisions on the same tool and agent."""

from __future__ import annotations

import html
import re
from pathlib import Path

import anyio
import pytest

from broker.approvals.model import Approver
from broker.approvals.verdict import Deny
from tests.e2e.harness import running_broker
from tests.web.support import hold, http_signed_in, web_settings

pytestmark = pytest.mark.anyio

NOTE = "first line\nsecond line <b>bold?</b>"
MEMO = "".join(f"paragraph {n}: keep this in mind.\n" for n in range(200))
ORDER = {"symbol": "BTCUSD", "side": "buy", "price": 90000, "memo": MEMO, "note": NOTE, "quantity": 250}


def field_names(page: str) -> list[str]:
    return re.findall(r'class="call-field[^"]*" data-field="([^"]+)"', page)


async def test_the_detail_page_reads_in_order_with_context(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path)) as running:
        with anyio.fail_after(60):
            earlier = await hold(running, {**ORDER, "price": 1})
            await running.broker.approvals.decide(
                earlier.id,
                Deny("too big <today>"),
                approver=Approver("bob", frozenset({"trading-leads"})),
                via="web",
            )
            approval = await hold(running, ORDER)
            async with http_signed_in(running, "alice") as http:
                page = (await http.get(f"/approvals/{approval.id}")).text

                # Decisive first (the rule's `when` tests quantity), then the agent's own order.
                assert field_names(page) == ["quantity", "symbol", "side", "price", "memo", "note"]
                assert '<div class="call-field shape-short decisive" data-field="quantity"' in page
                assert (
                    '<pre class="value-block">first line\nsecond line &lt;b&gt;bold?&lt;/b&gt;</pre>' in page
                )
                memo = page[page.index('data-field="memo"') : page.index('data-field="note"')]
                assert '<details class="fold" data-key="fold-memo">' in memo
                assert f"show all {len(MEMO):,} characters" in memo
                assert (
                    html.unescape(memo.split('<pre class="value-block full">')[1].split("</pre>")[0]) == MEMO
                )

                assert 'data-risk="critical"' in page and "financial · critical risk" in page
                assert "Place a limit order." in page
                assert '<li class="mono">quantity = 250 &gt; 5</li>' in page
                assert "1 agent call; no agent is waiting on this broker process" in page
                recent = page[page.index('class="recent-decisions"') :]
                assert f'href="/approvals/{earlier.id}"' in recent and "too big &lt;today&gt;" in recent

                rows = (await http.get("/inbox/rows")).text
                row = rows[rows.index(f'data-approval-id="{approval.id}"') :]
                assert 'data-risk="critical"' in row
                preview = re.findall(r'class="arg[^"]*" data-field="([^"]+)"', row)
                assert preview[:4] == ["quantity", "symbol", "side", "price"]
                assert "+2 more" in row


async def test_a_changed_policy_is_said_and_nothing_is_marked_decisive(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        with anyio.fail_after(60):
            approval = await hold(running, ORDER, revision="0123456789ab")
            async with http_signed_in(running, "alice") as http:
                page = (await http.get(f"/approvals/{approval.id}")).text
            assert field_names(page) == ["symbol", "side", "price", "memo", "note", "quantity"]
            assert "decisive" not in " ".join(re.findall(r'class="call-field[^"]*"', page))
            assert "the policy changed since this call was held (revision 0123456789ab" in page
            assert 'data-risk="unknown"' in page  # no upstream lists the tool


async def test_the_api_gives_fields_in_reading_order_and_the_context(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path)) as running:
        with anyio.fail_after(60):
            approval = await hold(running, ORDER)
            async with running.approver("alice") as api:
                shown = (await api.get(f"/api/approvals/{approval.id}")).json()
                listed = (await api.get("/api/approvals", params={"status": "pending"})).json()["approvals"]
            assert shown["arguments"] == ORDER  # unchanged: the exact arguments
            assert [field["name"] for field in shown["fields"]] == [
                "quantity",
                "symbol",
                "side",
                "price",
                "memo",
                "note",
            ]
            shapes = {field["name"]: (field["shape"], field["decisive"]) for field in shown["fields"]}
            assert shapes["quantity"] == ("short", True)
            assert shapes["note"] == ("multiline", False) and shapes["memo"] == ("long", False)
            context = shown["context"]
            assert context["hold"]["conditions"] == [
                {"path": "quantity", "text": "quantity = 250 > 5", "holds": True}
            ]
            assert context["tool"]["risk"] == "critical" and context["tool"]["category"] == "financial"
            assert context["tool"]["description"].startswith("Place a limit order.")
            assert context["waiting"]["callers"] == 1 and context["waiting"]["held_here"] == 0
            assert context["recent"] == []
            assert listed[0]["fields"][0]["name"] == "quantity"
            assert listed[0]["context"]["tool"]["risk"] == "critical"
