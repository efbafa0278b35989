"""Single sign-on for the inbox over plain HTTP, against the real local authorization server.

The client follows every redirect the way a browser does (broker -> provider -> broker); the
bad cases tamper with one step and expect a clear page, a log line and no session.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx2
import pytest

from broker.channels.web.sessions import COOKIE_NAME
from tests.authserver.server import AuthServer
from tests.e2e.harness import RunningBroker
from tests.web.sso_support import CLIENT_ID, held_order, register_inbox_client, sso_broker
from tests.web.support import ApprovalFeed, csrf_token

pytestmark = pytest.mark.anyio


def browser_like(running: RunningBroker) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=running.url, timeout=30, follow_redirects=True)


async def begin(http: httpx2.AsyncClient, next_path: str = "/") -> tuple[str, dict[str, list[str]]]:
    """Starts a sign-on and stops at the provider's answer: (the callback URL, its query)."""
    start = await http.get("/signin/oidc", params={"next": next_path}, follow_redirects=False)
    assert start.status_code == 303, start.text
    at_provider = await http.get(start.headers["location"], follow_redirects=False)
    assert at_provider.status_code == 302, at_provider.text
    callback = at_provider.headers["location"]
    return callback, parse_qs(urlsplit(callback).query)


async def test_an_approver_signs_on_and_lands_where_she_was_going(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    with anyio.fail_after(60):
        async with sso_broker(auth_server, tmp_path) as running, browser_like(running) as http:
            page = await http.get("/login", params={"next": "/history"})
            assert "Sign in with Example SSO" in page.text
            assert 'href="/signin/oidc?next=%2Fhistory"' in page.text
            start = await http.get("/signin/oidc", params={"next": "/history"}, follow_redirects=False)
            query = parse_qs(urlsplit(start.headers["location"]).query)
            assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
            assert query["state"] and query["nonce"] and query["client_id"] == ["broker-inbox"]
            assert query["redirect_uri"] == [f"{running.url}/signin/oidc/callback"]
            landed = await http.get(start.headers["location"])
            assert landed.status_code == 200
            assert landed.url.path == "/history"
            assert '<span class="who">alice</span>' in landed.text
            # The session survives further requests and ends at logout like any other.
            assert (await http.get("/tools")).status_code == 200
            out = await http.post("/logout", data={"csrf_token": csrf_token(landed.text)})
            assert out.url.path == "/login"
            assert (await http.get("/history")).url.path == "/login"
        # This provider names no end_session_endpoint, so the logout stayed with the broker.
        assert auth_server.end_session.calls == []


@pytest.mark.parametrize("configured", [False, True], ids=["default", "configured"])
async def test_logout_ends_the_sign_on_at_the_provider_too(
    auth_server: AuthServer, tmp_path: Path, configured: bool
) -> None:
    auth_server.end_session.enabled = True
    sso = register_inbox_client(auth_server)
    if configured:
        # Somewhere the broker's own URL is not (behind a proxy, say): the provider must know it.
        sso = replace(sso, post_logout_redirect_uri="http://inbox.example/login")
        auth_server.clients[CLIENT_ID].metadata["post_logout_redirect_uris"] = [sso.post_logout_redirect_uri]
    with anyio.fail_after(60):
        async with sso_broker(auth_server, tmp_path, sso) as running, browser_like(running) as http:
            callback, _ = await begin(http, "/history")
            landed = await http.get(callback)
            assert '<span class="who">alice</span>' in landed.text
            out = await http.post(
                "/logout", data={"csrf_token": csrf_token(landed.text)}, follow_redirects=False
            )
            # A page that moves on by itself, not a 303: the form's CSP would hold that redirect.
            assert out.status_code == 200 and "You are signed out of the broker" in out.text
            refresh = re.search(r'<meta http-equiv="refresh" content="0; url=([^"]+)">', out.text)
            assert refresh is not None
            onward = html.unescape(refresh.group(1))
            to_provider = urlsplit(onward)
            assert (
                f"{to_provider.scheme}://{to_provider.netloc}{to_provider.path}"
                == f"{auth_server.issuer}/logout"
            )
            back = sso.post_logout_redirect_uri or f"{running.url}/login"
            query = parse_qs(to_provider.query)
            assert query["post_logout_redirect_uri"] == [back] and query["client_id"] == [CLIENT_ID]
            # The broker's session ended before the browser left for the provider.
            assert COOKIE_NAME in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
            assert (await http.get("/history")).url.path == "/login"
            at_provider = await http.get(onward, follow_redirects=False)
            assert at_provider.status_code == 302 and at_provider.headers["location"] == back
        [call] = auth_server.end_session.calls
        assert call.refusal is None and call.hint_sub == "alice"


async def test_groups_come_from_the_provider_and_decide_who_may_approve(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    """Bob has no configured group; the provider's groups claim makes him a trading lead."""
    auth_server.login_as = "bob"
    feed = ApprovalFeed()
    with anyio.fail_after(60):
        async with sso_broker(auth_server, tmp_path) as running, browser_like(running) as http:
            running.broker.approvals.add_listener(feed)
            async with held_order(running, feed, 2001) as held:
                approval = held.approval
                assert approval is not None
                callback, _ = await begin(http, f"/approvals/{approval.id}")
                page = await http.get(callback)
                assert page.url.path == f"/approvals/{approval.id}"
                decided = await http.post(
                    f"/approvals/{approval.id}/approve",
                    data={"csrf_token": csrf_token(page.text), "reason": "fine"},
                )
                assert decided.status_code == 200, decided.text
            assert not held.result.is_error
            assert held.result.structured_content["price"] == 2001
            async with running.approver("alice") as api:
                record = (await api.get(f"/api/approvals/{approval.id}")).json()
            assert (record["decided_by"], record["decided_via"]) == ("bob", "web")


async def test_an_identity_that_is_no_approver_gets_a_403_and_no_session(
    auth_server: AuthServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth_server.login_as = "carol"
    with anyio.fail_after(60), caplog.at_level(logging.WARNING):
        async with sso_broker(auth_server, tmp_path) as running, browser_like(running) as http:
            callback, _ = await begin(http)
            refused = await http.get(callback)
            assert refused.status_code == 403
            assert "carol@example.com is not an approver of this broker" in refused.text
            assert (await http.get("/")).url.path == "/login"
    assert "carol@example.com is not an approver" in caplog.text


async def test_a_callback_without_a_sign_in_in_progress_is_refused(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    with anyio.fail_after(60):
        async with sso_broker(auth_server, tmp_path) as running, browser_like(running) as http:
            callback, _ = await begin(http)
            # Another browser (no pending cookie) replays the provider's answer.
            async with browser_like(running) as stranger:
                refused = await stranger.get(callback)
            assert refused.status_code == 400
            assert "Sign-in not in progress" in refused.text
            assert COOKIE_NAME not in refused.cookies or "alice" not in refused.text
            # The first browser finishes; replaying the same answer afterwards finds nothing to finish.
            assert (await http.get(callback)).url.path == "/"
            http.cookies.clear()
            again = await http.get(callback)
            assert again.status_code == 400


async def test_a_forged_state_and_a_replayed_code_are_refused(
    auth_server: AuthServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with anyio.fail_after(60), caplog.at_level(logging.WARNING):
        async with sso_broker(auth_server, tmp_path) as running, browser_like(running) as http:
            _, query = await begin(http)
            forged = await http.get(
                "/signin/oidc/callback", params={"code": query["code"][0], "state": "forged-state"}
            )
            assert forged.status_code == 400
            assert "does not belong to the sign-in this browser started" in forged.text
            # The forged attempt spent the pending sign-in; the code itself is still unused.
            assert (await http.get("/")).url.path == "/login"

            first, first_query = await begin(http)
            assert (await http.get(first)).url.path == "/"
            http.cookies.clear()
            _, fresh = await begin(http)
            replayed = await http.get(
                "/signin/oidc/callback", params={"code": first_query["code"][0], "state": fresh["state"][0]}
            )
            assert replayed.status_code == 401
            assert "refused the code" in replayed.text
            assert (await http.get("/")).url.path == "/login"
    assert "missing or wrong state" in caplog.text and "refused the code" in caplog.text


async def test_an_error_from_the_provider_is_shown(auth_server: AuthServer, tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with sso_broker(auth_server, tmp_path) as running, browser_like(running) as http:
            _, query = await begin(http)
            denied = await http.get(
                "/signin/oidc/callback?"
                + urlencode(
                    {
                        "error": "access_denied",
                        "error_description": "user cancelled",
                        "state": query["state"][0],
                    }
                )
            )
            assert denied.status_code == 401
            assert "access_denied user cancelled" in denied.text


@pytest.mark.parametrize("mode", ["down", "garbage"])
@pytest.mark.parametrize("part", ["metadata", "jwks"])
async def test_a_provider_that_is_down_or_answers_garbage_means_no_session(
    auth_server: AuthServer, tmp_path: Path, part: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Discovery fails when the sign-on starts; the keys fail when the ID token is checked."""
    with anyio.fail_after(60), caplog.at_level(logging.WARNING):
        async with sso_broker(auth_server, tmp_path) as running, browser_like(running) as http:
            setattr(auth_server, f"{part}_mode", mode)
            refused = await http.get("/signin/oidc" if part == "metadata" else (await begin(http))[0])
            assert refused.status_code == 502
            assert "Identity provider unavailable" in refused.text
            assert (await http.get("/")).url.path == "/login"
    assert "identity provider unavailable" in caplog.text


async def test_passwords_still_work_beside_single_sign_on(auth_server: AuthServer, tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with sso_broker(auth_server, tmp_path) as running, browser_like(running) as http:
            form = await http.get("/login")
            assert 'name="password"' in form.text
            signed_in = await http.post(
                "/login",
                data={"username": "mallory", "password": "mallory-pw-3", "csrf_token": csrf_token(form.text)},
            )
            assert '<span class="who">mallory</span>' in signed_in.text
            # A password session ends with the broker alone, whatever the provider offers.
            auth_server.end_session.enabled = True
            out = await http.post("/logout", data={"csrf_token": csrf_token(signed_in.text)})
            assert out.url.path == "/login" and "mallory" not in out.text
        assert auth_server.end_session.calls == []
