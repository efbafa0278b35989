"""The quorum progress the inbox shows is the API's and Slack's (broker.approvals.quorum.progress_text),
over plain HTTP against a real broker: for a rule that wants approvers from groups, the panel says
which group still has nobody, so an approver reading only the page sees whose yes is missing."""

from __future__ import annotations

import html
import re
from pathlib import Path

import anyio
import pytest

from broker.approvals.service import Approver
from broker.approvals.verdict import Approve
from tests.e2e.harness import running_broker
from tests.web.support import hold, http_signed_in, order, web_settings

pytestmark = pytest.mark.anyio

PROGRESS = re.compile(r"<p class=\"hint quorum\" data-quorum-progress>([^<]*)</p>")


def shown_progress(page: str) -> str:
    found = PROGRESS.findall(page)
    assert len(found) == 1, found
    return html.unescape(found[0])


async def test_the_panel_says_which_group_still_needs_an_approver_in_the_apis_words(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        approval = await hold(running, order(4001), quorum=2, quorum_from=("@trading-leads", "@risk"))
        bob = Approver("bob", frozenset({"trading-leads"}))
        with anyio.fail_after(30):
            await running.broker.approvals.decide(approval.id, Approve(), approver=bob, via="api")
            async with running.approver("alice") as api:
                shown = await api.get(f"/api/approvals/{approval.id}")
            async with http_signed_in(running, "alice") as http:
                page = await http.get(f"/approvals/{approval.id}")
                panel = await http.get(f"/approvals/{approval.id}/panel")
        assert shown.status_code == 200, shown.text
        expected = "1 of 2 approvals: bob; still needs one of @risk"
        assert shown.json()["progress"] == expected
        assert shown.json()["quorum"]["missing"] == ["@risk"]
        assert page.status_code == 200 and panel.status_code == 200
        assert shown_progress(page.text) == expected
        assert shown_progress(panel.text) == expected


async def test_a_single_decision_shows_no_progress_and_a_plain_quorum_no_groups(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        single = await hold(running, order(4002))
        pair = await hold(running, order(4003), quorum=2)
        with anyio.fail_after(30):
            async with http_signed_in(running, "alice") as http:
                single_page = await http.get(f"/approvals/{single.id}")
                pair_page = await http.get(f"/approvals/{pair.id}")
        assert single_page.status_code == 200 and "data-quorum-progress" not in single_page.text
        assert shown_progress(pair_page.text) == "0 of 2 approvals"


ROW = re.compile(r'<tr data-approval-id="([^"]+)".*?</tr>', re.DOTALL)


def inbox_row(page: str, approval_id: str) -> str:
    rows = {match.group(1): match.group(0) for match in ROW.finditer(page)}
    assert approval_id in rows, list(rows)
    return rows[approval_id]


async def test_an_inbox_row_shows_the_progress_and_whether_the_viewers_yes_is_in(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        approval = await hold(running, order(4004), quorum=2)
        single = await hold(running, order(4005))
        bob = Approver("bob", frozenset({"trading-leads"}))
        with anyio.fail_after(30):
            await running.broker.approvals.decide(approval.id, Approve(), approver=bob, via="api")
            pages = {}
            for user in ("alice", "bob", "mallory"):
                async with http_signed_in(running, user) as http:
                    pages[user] = (await http.get("/")).text
        # Alice still has to decide: the row says whose yes is in and offers the review.
        alice = inbox_row(pages["alice"], approval.id)
        assert shown_progress_row(alice) == "1 of 2 approvals: bob"
        assert ">Review</a>" in alice and "data-voted" not in alice
        # Bob's yes is in: his row says so instead of asking him again.
        mine = inbox_row(pages["bob"], approval.id)
        assert "data-voted" in mine and ">you approved</span>" in mine and ">Review</a>" not in mine
        assert ">Review</a>" in inbox_row(pages["bob"], single.id)
        # A viewer who may not decide reads why on the row (not a generic hint).
        other = inbox_row(pages["mallory"], approval.id)
        assert "view only" in other
        assert "title=\"mallory is not an approver for rule rules[2] 'place_order'" in html.unescape(other)
        # A single decision has no progress line.
        assert "data-quorum-progress" not in inbox_row(pages["alice"], single.id)
        # On the call's own page too, bob reads that his yes is in (and that he may still deny).
        with anyio.fail_after(30):
            async with http_signed_in(running, "bob") as http:
                his = (await http.get(f"/approvals/{approval.id}")).text
            async with http_signed_in(running, "alice") as http:
                hers = (await http.get(f"/approvals/{approval.id}/panel")).text
        assert "data-voted>Your approval counts" in his and "data-voted" not in hers


def shown_progress_row(row: str) -> str:
    found = re.findall(r'<span class="why quorum" data-quorum-progress>([^<]*)</span>', row)
    assert len(found) == 1, found
    return html.unescape(found[0])
