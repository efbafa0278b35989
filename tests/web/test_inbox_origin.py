"""Cross-site requests to the inbox are refused on the browser's word (Origin, Sec-Fetch-Site), even
when they carry a valid session cookie and CSRF token; without those headers the token decides."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import anyio
import httpx2
import pytest
from fastapi.routing import APIRoute
from starlette.requests import Request

from broker.approvals import ApprovalStatus
from broker.channels.web.origin import STATE_CHANGING_METHODS, OriginCheck
from tests.e2e.harness import running_broker
from tests.web.support import PASSWORDS, csrf_token, http_signed_in, web_settings
from tests.web.test_inbox_http import held

pytestmark = pytest.mark.anyio

CROSS_SITE = [
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "null", "Sec-Fetch-Site": "same-origin"},
]


async def test_a_cross_site_decision_is_refused_even_with_a_valid_cookie_and_token(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        own = running.url  # http://127.0.0.1:<port>, what the browser calls this inbox
        with anyio.fail_after(60):
            approval, _ = await running.broker.approvals.open(held(price=7))
            async with http_signed_in(running, "alice") as http:
                token = csrf_token((await http.get(f"/approvals/{approval.id}")).text)
                other_scheme = own.replace("http://", "https://")
                other_port = own.rsplit(":", 1)[0] + ":1"
                for headers in [*CROSS_SITE, {"Origin": other_scheme}, {"Origin": other_port}]:
                    refused = await http.post(
                        f"/approvals/{approval.id}/approve",
                        data={"csrf_token": token, "reason": "forged"},
                        headers=headers,
                    )
                    assert refused.status_code == 403, headers
                    assert "Cross-site request refused" in refused.text
                    assert "Nothing was done" in refused.text
                stored = await running.broker.store.get(approval.id)
                assert stored is not None and stored.status is ApprovalStatus.PENDING
                trail = await running.broker.store.audit_trail(approval.id)
                assert [record.event for record in trail] == ["requested"]

                # The same request from the inbox's own page goes through.
                accepted = await http.post(
                    f"/approvals/{approval.id}/deny",
                    data={"csrf_token": token, "reason": "from our own page"},
                    headers={"Origin": own, "Sec-Fetch-Site": "same-origin"},
                )
                assert accepted.status_code == 303, accepted.text
                decided = await running.broker.store.get(approval.id)
                assert decided is not None and decided.status is ApprovalStatus.DENIED
                assert decided.decided_by == "alice"


async def test_without_origin_headers_the_csrf_token_decides(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        with anyio.fail_after(60):
            first, _ = await running.broker.approvals.open(held(price=8))
            async with http_signed_in(running, "alice") as http:
                token = csrf_token((await http.get("/")).text)
                without_token = await http.post(f"/approvals/{first.id}/approve", data={"reason": "x"})
                assert without_token.status_code == 403
                assert "security token is missing or out of date" in without_token.text
                with_token = await http.post(f"/approvals/{first.id}/deny", data={"csrf_token": token})
                assert with_token.status_code == 303
                decided = await running.broker.store.get(first.id)
                assert decided is not None and decided.status is ApprovalStatus.DENIED
                # A user-initiated request (Sec-Fetch-Site: none) still needs its token.
                none_without_token = await http.post("/logout", headers={"Sec-Fetch-Site": "none"})
                assert none_without_token.status_code == 403
                assert "security token" in none_without_token.text


async def test_signing_in_and_out_from_another_site_is_refused(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        with anyio.fail_after(60):
            async with httpx2.AsyncClient(base_url=running.url, timeout=30) as http:
                token = csrf_token((await http.get("/login")).text)
                credentials = {"username": "alice", "password": PASSWORDS["alice"], "csrf_token": token}
                for headers in CROSS_SITE:
                    # Login CSRF: another site must not sign the browser in as somebody else.
                    forced = await http.post("/login", data=credentials, headers=headers)
                    assert forced.status_code == 403, headers
                    assert "Cross-site request refused" in forced.text
                assert (await http.get("/")).status_code == 303  # still signed out
            async with http_signed_in(running, "alice") as http:
                inbox = await http.get("/")
                token = csrf_token(inbox.text)
                for headers in CROSS_SITE:
                    out = await http.post("/logout", data={"csrf_token": token}, headers=headers)
                    assert out.status_code == 403, headers
                assert (await http.get("/")).status_code == 200  # still signed in


async def test_every_state_changing_route_of_the_inbox_checks_the_origin(tmp_path: Path) -> None:
    async with running_broker(web_settings(tmp_path, servers={})) as running:
        inbox = running.broker.web_inbox
        assert inbox is not None
        routes = [
            route
            for route in inbox.router().routes
            if isinstance(route, APIRoute) and route.methods & STATE_CHANGING_METHODS
        ]
        assert len(routes) >= 4  # approve, deny, login, logout
        with anyio.fail_after(60):
            async with http_signed_in(running, "alice") as http:
                token = csrf_token((await http.get("/")).text)
                for route in routes:
                    path = route.path.replace("{approval_id}", "apv-any")
                    for method in route.methods & STATE_CHANGING_METHODS:
                        refused = await http.request(
                            method,
                            path,
                            data={"csrf_token": token},
                            headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
                        )
                        assert refused.status_code == 403, (method, path)
                        assert "Cross-site request refused" in refused.text, (method, path)


def post(
    headers: dict[str, str], *, peer: str = "127.0.0.1", scheme: str = "http", host: str = "inbox.local:8765"
) -> Request:
    raw = [(b"host", host.encode())] + [
        (name.lower().encode(), value.encode()) for name, value in headers.items()
    ]
    return Request(
        {
            "type": "http",
            "method": "POST",
            "path": "/logout",
            "headers": raw,
            "client": (peer, 50000),
            "scheme": scheme,
        }
    )


def test_the_inbox_knows_its_own_origin_behind_a_trusted_proxy_only() -> None:
    proxies = (ipaddress.ip_network("10.0.0.0/24"),)

    def trusted(request: Request) -> bool:
        assert request.client is not None
        return ipaddress.ip_address(request.client.host) in proxies[0]

    check = OriginCheck(trusted)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "Approvals.Example.com, inner:8765"}
    assert check.own_origin(post(forwarded, peer="10.0.0.9")) == "https://approvals.example.com"
    assert check.own_origin(post(forwarded, peer="192.0.2.1")) == "http://inbox.local:8765"
    assert check.own_origin(post({}, host="[::1]:80")) == "http://[::1]"
    assert check.own_origin(post({}, scheme="https", host="inbox.local:443")) == "https://inbox.local"

    page = {"Origin": "https://approvals.example.com", "Sec-Fetch-Site": "same-origin", **forwarded}
    assert check.refusal(post(page, peer="10.0.0.9")) is None
    # The same headers from a peer that is not a listed proxy are not believed, and the operator is told why.
    refusal = check.refusal(post(page, peer="192.0.2.1"))
    assert refusal is not None and "web.trusted_proxies" in refusal
    assert check.refusal(post({"Origin": "http://inbox.local:8765"})) is None
    assert check.refusal(post({"Origin": "HTTP://INBOX.local:8765"})) is None
    assert check.refusal(post({"Sec-Fetch-Site": "none"})) is None
    assert check.refusal(post({})) is None
    for origin in (
        "null",
        "http://inbox.local:8765/path",
        "http://user@inbox.local:8765",
        "ftp://inbox.local",
    ):
        assert check.refusal(post({"Origin": origin})) is not None, origin
    assert check.refusal(post({"Origin": "http://inbox.local:8765"}, host="bad host/x")) is not None
