"""The web inbox over plain HTTP against a real broker: sign-in rules, the trusted proxy header,
security headers, history paging and filters, the tools view and the event stream."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import anyio
import httpx2
import pytest

from broker.approvals import ApprovalStatus, NewApproval
from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.outcomes import unknown_result
from broker.approvals.service import Approver
from broker.approvals.verdict import Approve, Deny
from broker.config.web import WebSettings
from tests.e2e.harness import running_broker
from tests.web.support import PASSWORDS, csrf_token, http_signed_in, web_settings

pytestmark = pytest.mark.anyio


def proxied(networks: tuple[str, ...]) -> WebSettings:
    return WebSettings(
        trusted_header="X-Forwarded-User",
        trusted_proxies=tuple(ipaddress.ip_network(network) for network in networks),
    )


def held(agent: str = "trader", *, tool: str = "place_order", price: float = 1.0) -> NewApproval:
    return NewApproval(
        agent=agent,
        server="exchange",
        tool=tool,
        upstream_tool=tool,
        arguments={"symbol": "BTCUSD", "side": "buy", "quantity": 10, "price": price},
        policy_revision="r-test",
        rule="rules[2] 'place_order'",
        rule_reason="big orders",
        timeout=timedelta(minutes=5),
    )


async def test_the_trusted_header_signs_people_in_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    trusted = web_settings(tmp_path / "a", servers={}, web=proxied(("127.0.0.1/32",)))
    untrusted = web_settings(tmp_path / "b", servers={}, web=proxied(("10.0.0.0/8", "::1/128")))
    async with running_broker(trusted) as via_proxy, httpx2.AsyncClient(base_url=via_proxy.url) as http:
        page = await http.get("/", headers={"X-Forwarded-User": "alice", "X-Forwarded-Proto": "https"})
        assert page.status_code == 200
        assert '<span class="who">alice</span>' in page.text
        # The proxy terminated TLS, so the session cookie is marked Secure.
        assert "; secure" in page.headers["set-cookie"].lower()
        stranger = await http.get("/", headers={"X-Forwarded-User": "eve"})
        assert stranger.status_code == 403
        assert "eve is not an approver" in stranger.text
        # The cookie the proxy's request left behind signs nobody in once the proxy stops vouching.
        without_header = await http.get("/")
        assert without_header.status_code == 303
        assert without_header.headers["location"] == "/login?next=%2F"
    async with running_broker(untrusted) as direct, httpx2.AsyncClient(base_url=direct.url) as http:
        spoofed = await http.get("/", headers={"X-Forwarded-User": "alice"})
        assert spoofed.status_code == 303
        assert spoofed.headers["location"].startswith("/login")
        events = await http.get("/events", headers={"X-Forwarded-User": "alice"})
        assert events.status_code == 401


async def test_sign_in_rules_redirects_headers_throttling_and_sign_out(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        async with httpx2.AsyncClient(base_url=running.url) as http:
            redirected = await http.get("/history?agent=trader")
            assert redirected.status_code == 303
            assert redirected.headers["location"] == "/login?next=%2Fhistory%3Fagent%3Dtrader"
            # Even an anonymous visitor gets a session: it carries the CSRF token of the sign-in form.
            cookie = redirected.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
            form = await http.get("/login")
            headers = form.headers
            assert "script-src 'self'" in headers["content-security-policy"]
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert "unsafe-inline" not in headers["content-security-policy"]
            assert headers["x-frame-options"] == "DENY"
            assert headers["referrer-policy"] == "same-origin"
            assert "set-cookie" not in headers  # the session from the redirect is reused
            token = csrf_token(form.text)

            # A login without the form's token is refused before the password is even looked at.
            no_token = await http.post("/login", data={"username": "alice", "password": PASSWORDS["alice"]})
            assert no_token.status_code == 403

            # Off-site `next` targets are replaced by the inbox.
            signed_in = await http.post(
                "/login",
                data={
                    "username": "alice",
                    "password": PASSWORDS["alice"],
                    "csrf_token": token,
                    "next": "//evil.example/",
                },
            )
            assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
            inbox = await http.get("/")
            assert inbox.status_code == 200 and "Nothing is waiting." in inbox.text

            # Signing out needs the (new, post-sign-in) token too.
            assert (await http.post("/logout", data={"csrf_token": token})).status_code == 403
            assert (await http.get("/")).status_code == 200
            out = await http.post("/logout", data={"csrf_token": csrf_token(inbox.text)})
            assert out.status_code == 303 and out.headers["location"] == "/login"
            assert (await http.get("/")).status_code == 303

        async with httpx2.AsyncClient(base_url=running.url) as guesser:
            token = csrf_token((await guesser.get("/login")).text)
            for attempt in range(5):
                wrong = await guesser.post(
                    "/login", data={"username": "bob", "password": f"guess-{attempt}", "csrf_token": token}
                )
                assert wrong.status_code == 401
                assert "Wrong user name or password." in wrong.text
            unknown = await guesser.post(
                "/login", data={"username": "nobody", "password": "x", "csrf_token": token}
            )
            assert unknown.status_code == 429  # this address has failed too often
            locked = await guesser.post(
                "/login", data={"username": "bob", "password": PASSWORDS["bob"], "csrf_token": token}
            )
            assert locked.status_code == 429
            assert "Too many failed sign-ins" in locked.text


async def test_history_filters_by_status_agent_and_tool_and_pages_to_older_calls(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        service = running.broker.approvals
        bob = Approver("bob", frozenset({"trading-leads"}))
        for index in range(52):
            approval, _ = await service.open(held("trader", price=1000 + index))
            await service.decide(approval.id, Deny("no"), approver=bob, via="api")
        for index in range(3):
            approval, _ = await service.open(held("auditor", tool="get_balances", price=index))
            await service.cancel(approval.id, actor="auditor", reason="changed my mind")
        pending, _ = await service.open(held("trader", price=5))

        async with http_signed_in(running, "alice") as http:
            first = await http.get("/history")
            assert first.status_code == 200
            assert first.text.count("<tr data-approval-id=") == 50
            assert pending.id not in first.text  # still waiting: only in the inbox
            older = first.text.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]
            second = await http.get(older.replace("&amp;", "&"))
            assert second.text.count("<tr data-approval-id=") == 5
            assert 'rel="next"' not in second.text and "Newest" in second.text

            cancelled = await http.get("/history", params={"status": "cancelled"})
            assert cancelled.text.count("<tr data-approval-id=") == 3
            assert "changed my mind" in cancelled.text and "cancelled</span>" in cancelled.text
            by_agent = await http.get("/history", params={"agent": "auditor", "tool": "get_balances"})
            assert by_agent.text.count("<tr data-approval-id=") == 3
            none = await http.get("/history", params={"agent": "auditor", "tool": "place_order"})
            assert "No calls match." in none.text

            bad = await http.get("/history", params={"before": "yesterday", "status": "sleeping"})
            assert bad.status_code == 400
            assert "unknown status &#39;sleeping&#39;" in bad.text
            assert "must be an ISO 8601 time" in bad.text
            forged = await http.get("/history", params={"after": "<not ours>"})
            assert forged.status_code == 400 and "not a cursor this broker handed out" in forged.text
            edge = await http.get("/history", params={"before": "0001-01-01T00:00:00+01:00"})
            assert edge.status_code == 400 and "must be an ISO 8601 time" in edge.text


async def test_a_call_whose_outcome_is_unknown_shows_what_to_check(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        service = running.broker.approvals
        bob = Approver("bob", frozenset({"trading-leads"}))
        new = replace(held(), arguments={**held().arguments, "newClientOrderId": "web-<7>"})
        approval, _ = await service.open(new)
        await service.decide(approval.id, Approve(), approver=bob, via="api")
        # No upstream is configured, so the call waits approved; a replica sent it and died.
        await service.store.transition(
            approval.id,
            expected={ApprovalStatus.APPROVED},
            to=ApprovalStatus.RELEASED,
            changes={"released_by": "replica-dead", "released_at": approval.created_at},
            audit=AuditEvent(AuditEventKind.RELEASED, "replica-dead"),
        )
        await service.store.transition(
            approval.id,
            expected={ApprovalStatus.RELEASED},
            to=ApprovalStatus.OUTCOME_UNKNOWN,
            changes={"completed_at": approval.created_at, "result": unknown_result("the replica stopped")},
            audit=AuditEvent(AuditEventKind.OUTCOME_UNKNOWN, "survivor", {"error": "the replica stopped"}),
        )
        other, _ = await service.open(held(price=2))
        await service.decide(other.id, Deny(), approver=bob, via="api")

        async with http_signed_in(running, "alice") as http:
            page = await http.get(f"/approvals/{approval.id}")
            history = await http.get("/history", params={"status": "outcome_unknown"})
        assert page.status_code == 200
        assert 'data-status="outcome_unknown"' in page.text
        assert "Outcome unknown — it may have run</span>" in page.text
        assert "The call was sent to exchange and no answer came back (the replica stopped)." in page.text
        assert (
            "Check upstream &#39;exchange&#39; for this call before retrying (look for newClientOrderId=web-&lt;7&gt;); "
            "it was not re-sent." in page.text
        )
        assert '<dt>newClientOrderId</dt><dd class="mono">web-&lt;7&gt;</dd>' in page.text
        assert history.status_code == 200
        assert history.text.count("<tr data-approval-id=") == 1 and approval.id in history.text
        assert (
            '<option value="outcome_unknown" selected>Outcome unknown — it may have run</option>'
            in history.text
        )


async def test_the_event_stream_announces_changes_and_forgets_a_page_that_leaves(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        hub = running.broker.inbox_events
        async with http_signed_in(running, "bob") as http:
            with anyio.fail_after(15):
                async with http.stream("GET", "/events") as stream:
                    assert stream.status_code == 200
                    assert stream.headers["content-type"].startswith("text/event-stream")
                    assert stream.headers["cache-control"] == "no-store"
                    await hub.wait_for_subscribers(1)
                    approval, _ = await running.broker.approvals.open(held(price=7))
                    await running.broker.approvals.decide(
                        approval.id,
                        Deny(),
                        approver=Approver("alice", frozenset({"trading-leads"})),
                        via="slack",
                    )
                    events = []
                    async for line in stream.aiter_lines():
                        if line.startswith("data: "):
                            events.append(json.loads(line[len("data: ") :]))
                        if len(events) == 2:
                            break
                assert [(event["kind"], event["id"], event["status"]) for event in events] == [
                    ("opened", approval.id, "pending"),
                    ("updated", approval.id, "denied"),
                ]
                assert events[1]["decided_by"] == "alice" and events[1]["decided_via"] == "slack"
                await hub.wait_for_subscribers(0)


async def test_the_tools_view_shows_every_tool_with_its_decision_rule_and_risk(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path)) as running:
        async with http_signed_in(running, "mallory") as http:
            page = await http.get("/tools")
        assert page.status_code == 200
        rows = {
            chunk.split('"', 1)[0]: chunk.split("</tr>", 1)[0]
            for chunk in page.text.split('<tr data-tool="')[1:]
        }
        assert set(rows) == {
            "get_ticker",
            "get_balances",
            "list_open_orders",
            "place_order",
            "binance_us_cust_cancel_order",
            "withdraw",
        }
        assert (
            "action-deny" in rows["withdraw"] and "withdrawals are never made by agents" in rows["withdraw"]
        )
        assert "risk-critical" in rows["withdraw"]
        assert "action-require_approval" in rows["binance_us_cust_cancel_order"]
        assert "cancels are irreversible" in rows["binance_us_cust_cancel_order"]
        # The big-order rule only applies to some arguments; the page says so next to the plain allow.
        assert "action-allow" in rows["place_order"]
        assert "when args.quantity gt 5" in rows["place_order"]
        assert "risk-low" in rows["get_ticker"] and "read only" in rows["get_ticker"]
        assert "exchange: connected" in page.text
        assert running.broker.policy_file.holder.current.revision in page.text


async def test_the_inbox_can_be_switched_off(tmp_path: Path) -> None:
    settings = web_settings(tmp_path, servers={})
    async with (
        running_broker(replace(settings, web=WebSettings(enabled=False))) as running,
        httpx2.AsyncClient(base_url=running.url) as http,
    ):
        assert (await http.get("/")).status_code == 404
        assert (await http.get("/login")).status_code == 404
