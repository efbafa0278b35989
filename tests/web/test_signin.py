"""Who a request is answered for: password sessions, the trusted proxy header, cookie flags."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import anyio
import pytest
from starlette.requests import Request
from starlette.responses import Response

from broker.approvals.approvers import ApproverAccount, ApproverDirectory
from broker.channels.web.passwords import hash_password
from broker.channels.web.sessions import COOKIE_NAME
from broker.channels.web.signin import WebSignin
from broker.config.web import WebSettings

pytestmark = pytest.mark.anyio

PROXY = WebSettings(
    trusted_header="X-Forwarded-User",
    trusted_proxies=(ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/64")),
)


def request(peer: str, headers: dict[str, str] | None = None, *, cookie: str | None = None) -> Request:
    raw = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    if cookie is not None:
        raw.append((b"cookie", f"{COOKIE_NAME}={cookie}".encode()))
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/",
            "headers": raw,
            "client": (peer, 50000),
            "scheme": "http",
        }
    )


def directory(password: str = "pw") -> ApproverDirectory:
    return ApproverDirectory(
        [
            ApproverAccount("alice", frozenset({"leads"}), password_hash=hash_password(password, n=2**10)),
            ApproverAccount("carol"),
        ]
    )


def test_the_proxy_header_counts_only_from_a_trusted_address() -> None:
    signin = WebSignin(directory(), PROXY)
    vouched = signin.viewer(request("10.0.0.7", {"X-Forwarded-User": "alice"}))
    assert vouched.account is not None and vouched.account.name == "alice" and vouched.fresh
    assert vouched.approver is not None and vouched.approver.groups == frozenset({"leads"})
    assert signin.viewer(request("fd00::1", {"X-Forwarded-User": "alice"})).account is not None
    for peer in ("10.0.1.7", "127.0.0.1", "2001:db8::1"):
        assert signin.viewer(request(peer, {"X-Forwarded-User": "alice"})).account is None
    stranger = signin.viewer(request("10.0.0.7", {"X-Forwarded-User": "eve"}))
    assert stranger.account is None and stranger.proxy_user == "eve"


def test_a_proxy_session_needs_the_proxy_on_every_request() -> None:
    signin = WebSignin(directory(), PROXY)
    first = signin.viewer(request("10.0.0.7", {"X-Forwarded-User": "alice"}))
    cookie = signin.signer.dumps(first.session)
    again = signin.viewer(request("10.0.0.7", {"X-Forwarded-User": "alice"}, cookie=cookie))
    assert again.account is not None and not again.fresh and again.session == first.session
    assert signin.viewer(request("10.0.0.7", cookie=cookie)).account is None
    assert signin.viewer(request("192.0.2.1", cookie=cookie)).account is None
    # The proxy now names someone else: a new session, with a new CSRF token.
    switched = signin.viewer(request("10.0.0.7", {"X-Forwarded-User": "carol"}, cookie=cookie))
    assert switched.account is not None and switched.account.name == "carol"
    assert switched.session.csrf_token != first.session.csrf_token


async def test_a_password_session_lasts_until_the_password_changes() -> None:
    signin = WebSignin(directory("old"), WebSettings(session_secret="x" * 32))
    outcome = await signin.sign_in("alice", "old", "192.0.2.1")
    assert outcome.account is not None
    cookie = signin.signer.dumps(signin.session_for(outcome.account))
    assert signin.viewer(request("192.0.2.1", cookie=cookie)).account == outcome.account
    # Same secret (another replica, or a restart), new password: the old session no longer signs in.
    changed = WebSignin(directory("new"), WebSettings(session_secret="x" * 32))
    assert changed.viewer(request("192.0.2.1", cookie=cookie)).account is None
    # A different secret cannot read the cookie at all.
    other = WebSignin(directory("old"), WebSettings(session_secret="y" * 32))
    assert other.viewer(request("192.0.2.1", cookie=cookie)).account is None


async def test_unknown_people_and_accounts_without_passwords_cannot_sign_in() -> None:
    signin = WebSignin(directory("pw"), WebSettings())
    assert (await signin.sign_in("nobody", "pw", "192.0.2.1")).account is None
    assert (await signin.sign_in("carol", "pw", "192.0.2.2")).account is None
    assert (await signin.sign_in("alice", "PW", "192.0.2.3")).account is None
    assert (await signin.sign_in("alice", "pw", "192.0.2.4")).account is not None


def test_a_broken_password_hash_disables_only_that_account(caplog: pytest.LogCaptureFixture) -> None:
    accounts = ApproverDirectory(
        [
            ApproverAccount("alice", password_hash=hash_password("pw", n=2**10)),
            ApproverAccount("bob", password_hash="scrypt$3$8$1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5"),
        ]
    )
    signin = WebSignin(accounts, WebSettings())
    assert signin.password_accounts == 1
    assert "bob cannot sign in to the web inbox" in caplog.text


@pytest.mark.parametrize(
    ("settings", "peer", "headers", "secure"),
    [
        (WebSettings(), "192.0.2.1", {}, False),
        (WebSettings(), "192.0.2.1", {"X-Forwarded-Proto": "https"}, False),
        (PROXY, "10.0.0.7", {"X-Forwarded-Proto": "https"}, True),
        (PROXY, "10.0.9.9", {"X-Forwarded-Proto": "https"}, False),
        (replace(PROXY, cookie_secure=False), "10.0.0.7", {"X-Forwarded-Proto": "https"}, False),
        (WebSettings(cookie_secure=True), "192.0.2.1", {}, True),
    ],
)
def test_cookies_are_secure_over_https_as_far_as_a_trusted_proxy_says(
    settings: WebSettings, peer: str, headers: dict[str, str], secure: bool
) -> None:
    signin = WebSignin(directory(), settings)
    incoming = request(peer, headers)
    response = Response()
    signin.write_cookie(response, signin.viewer(incoming).session, incoming)
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    assert ("; secure" in cookie) is secure


async def test_a_burst_of_guesses_sent_together_is_limited_like_guesses_in_a_row() -> None:
    signin = WebSignin(directory("pw"), WebSettings())
    outcomes = []

    async def guess(n: int) -> None:
        outcomes.append(await signin.sign_in("alice", f"guess-{n}", "192.0.2.9"))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            for n in range(20):
                tasks.start_soon(guess, n)

    checked = [outcome for outcome in outcomes if outcome.retry_after is None]
    assert len(checked) == 5  # the throttle's limit: the rest were turned away unchecked
    assert all(outcome.account is None for outcome in outcomes)
