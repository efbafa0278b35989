"""The inbox's search and filters, and the history's export as CSV and JSON, over plain HTTP."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from broker.approvals.model import Approver
from broker.approvals.verdict import Approve, Deny
from broker.channels.web.export import HistoryExport
from broker.channels.web.filters import read_filters
from broker.channels.web.presenters import HISTORY_STATUSES
from tests.e2e.harness import running_broker
from tests.web.support import http_signed_in, web_settings
from tests.web.test_inbox_http import held

pytestmark = pytest.mark.anyio

BOB = Approver("bob", frozenset({"trading-leads"}))


def rows_in(html: str) -> int:
    return html.count("<tr data-approval-id=")


async def test_the_inbox_searches_and_filters_the_waiting_calls(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        service = running.broker.approvals
        orders = [(await service.open(held("trader", price=index)))[0] for index in range(3)]
        cancel, _ = await service.open(held("Rebalancer", tool="binance_us_cust_cancel_order"))
        decided, _ = await service.open(held("trader", price=99))
        await service.decide(decided.id, Deny(), approver=BOB, via="api")

        async with http_signed_in(running, "alice") as http:
            everything = await http.get("/")
            assert rows_in(everything.text) == 4 and decided.id not in everything.text
            assert '<span class="count" data-pending-count >4</span>' in everything.text
            by_agent = await http.get("/", params={"agent": "trader"})
            assert rows_in(by_agent.text) == 3 and cancel.id not in by_agent.text
            by_tool = await http.get("/", params={"tool": "binance_us_cust_cancel_order"})
            assert rows_in(by_tool.text) == 1 and cancel.id in by_tool.text
            # Search: part of a tool or an agent, any case, or an approval id exactly.
            assert rows_in((await http.get("/", params={"q": "CANCEL"})).text) == 1
            assert rows_in((await http.get("/", params={"q": "rebal"})).text) == 1
            by_id = await http.get("/", params={"q": orders[1].id})
            assert rows_in(by_id.text) == 1 and orders[1].id in by_id.text
            nothing = await http.get("/", params={"q": "withdraw"})
            assert rows_in(nothing.text) == 0 and "No waiting call matches." in nothing.text
            # The live fragment keeps the page's filters.
            assert 'data-live="/inbox/rows?agent=trader"' in by_agent.text
            fragment = await http.get("/inbox/rows", params={"agent": "trader"})
            assert rows_in(fragment.text) == 3
            too_long = await http.get("/", params={"q": "x" * 201})
            assert too_long.status_code == 400 and "at most 200" in too_long.text


async def test_the_inbox_pages_a_long_queue_and_caps_its_count(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        service = running.broker.approvals
        for index in range(53):
            await service.open(held("trader", price=index))
        async with http_signed_in(running, "alice") as http:
            first = await http.get("/")
            assert rows_in(first.text) == 50 and ">53</span>" in first.text
            older = first.text.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]
            second = await http.get(older.replace("&amp;", "&"))
            assert rows_in(second.text) == 3 and "Newest" in second.text


async def test_the_history_exports_as_csv_and_json_with_its_filters(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        service = running.broker.approvals
        for index in range(3):
            approval, _ = await service.open(held("trader", price=index))
            await service.decide(approval.id, Deny(f"no {index}"), approver=BOB, via="api")
        hostile, _ = await service.open(held("=HYPERLINK(1)", tool="get_balances"))
        await service.decide(hostile.id, Approve("+1 @alice -x"), approver=BOB, via="web")
        await service.open(held("trader", price=42))  # pending: not history

        async with http_signed_in(running, "alice") as http:
            page = await http.get("/history", params={"agent": "trader"})
            assert 'href="/history.csv?agent=trader"' in page.text

            exported = await http.get("/history.csv")
            assert exported.status_code == 200
            assert exported.headers["content-type"].startswith("text/csv")
            assert "attachment" in exported.headers["content-disposition"]
            table = list(csv.DictReader(io.StringIO(exported.text)))
            assert len(table) == 4
            assert list(table[0]) == [
                "id", "created_at", "status", "agent", "server", "tool", "arguments_sha256", "rule",
                "decided_by", "decided_via", "decided_at", "decision_reason", "completed_at",
            ]  # fmt: skip
            first = table[0]
            assert first["id"] == hostile.id
            # Cells a spreadsheet would evaluate are written as text.
            assert first["agent"] == "'=HYPERLINK(1)" and first["decision_reason"] == "'+1 @alice -x"
            assert first["decided_by"] == "bob" and first["status"] == "approved"
            assert first["arguments_sha256"] == hostile.arguments_hash and first["decided_at"]
            assert [row["decision_reason"] for row in table[1:]] == ["no 2", "no 1", "no 0"]

            denied = await http.get("/history.csv", params={"status": "denied", "agent": "trader"})
            assert len(list(csv.DictReader(io.StringIO(denied.text)))) == 3
            searched = await http.get("/history.json", params={"q": "balances"})
            assert searched.headers["content-type"] == "application/json"
            document = json.loads(searched.text)
            assert document["complete"] is True
            assert [row["id"] for row in document["approvals"]] == [hostile.id]
            assert document["approvals"][0]["agent"] == "=HYPERLINK(1)"  # JSON is data, kept as it is
            empty = json.loads((await http.get("/history.json", params={"tool": "nothing"})).text)
            assert empty == {"approvals": [], "complete": True}
            bad = await http.get("/history.csv", params={"status": "sleeping"})
            assert bad.status_code == 400 and "unknown status" in bad.text

        async with running.approver("alice") as unsigned:
            refused = await unsigned.get("/history.csv", follow_redirects=False)
            assert refused.status_code == 303


async def test_the_export_reads_the_store_a_page_at_a_time_to_the_end(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        service = running.broker.approvals
        made = []
        for index in range(5):
            approval, _ = await service.open(held("trader", price=index))
            made.append(await service.decide(approval.id, Deny(), approver=BOB, via="api"))
        export = HistoryExport(service.store, HISTORY_STATUSES, page=2)
        for kind in ("csv", "json"):
            response = await export.response(read_filters({}, statuses=HISTORY_STATUSES), kind)
            chunks = [chunk async for chunk in response.body_iterator]
            body = "".join(chunk if isinstance(chunk, str) else bytes(chunk).decode() for chunk in chunks)
            if kind == "csv":
                ids = [row["id"] for row in csv.DictReader(io.StringIO(body))]
            else:
                ids = [row["id"] for row in json.loads(body)["approvals"]]
            assert ids == [approval.id for approval in reversed(made)]
