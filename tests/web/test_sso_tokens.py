"""The approvers' identity provider client against the real local authorization server: every bad
token is refused with its reason, the JWKS is refreshed for a new key at a bounded rate and kept
while the provider is down; the decisions API takes the provider's access tokens beside approver tokens."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from broker.app import Broker
from broker.approvals.approvers import ApproverAccount, ApproverDirectory
from broker.approvals.clock import utc_now
from broker.channels.sso.identity import credential_of, match_claims, provider_groups
from broker.channels.sso.provider import IdentityProvider, ProviderUnavailable, TokenRejected
from broker.channels.web.sessions import Session
from broker.channels.web.signin import WebSignin
from broker.config.errors import ConfigError
from broker.config.sso import SsoSettings
from broker.config.web import WebSettings
from tests.authserver.server import AuthServer
from tests.e2e.harness import exchange_server, make_settings
from tests.e2e.test_approvals_cli import cli
from tests.store.conftest import ManualClock
from tests.web.sso_support import (
    API_AUDIENCE,
    CLIENT_ID,
    held_order,
    introspecting,
    register_inbox_client,
    sso_accounts,
    sso_broker,
)
from tests.web.support import ApprovalFeed, text_of
from tests.web.test_signin import request

pytestmark = pytest.mark.anyio


def settings_for(auth: AuthServer, **changes: Any) -> SsoSettings:
    settings = SsoSettings(
        issuer=auth.issuer,
        client_id=CLIENT_ID,
        match="email",
        groups_claim="groups",
        groups={"trading-leads": "trading-leads"},
        api_audience=API_AUDIENCE,
    )
    return replace(settings, **changes)


def real_time() -> ManualClock:
    return ManualClock(datetime.fromtimestamp(int(time.time()), tz=UTC))


BAD_TOKENS = {
    "expired": (lambda auth: auth.expired_token(aud=API_AUDIENCE), "expired"),
    "not yet valid": (lambda auth: auth.not_yet_valid_token(aud=API_AUDIENCE), "not yet valid"),
    "wrong issuer": (lambda auth: auth.wrong_issuer_token(aud=API_AUDIENCE), "iss"),
    "wrong audience": (lambda auth: auth.token(aud="someone-else"), "aud"),
    "unknown key": (lambda auth: auth.unknown_kid_token(aud=API_AUDIENCE), "no key 'never-published'"),
    "wrongly signed": (lambda auth: auth.wrongly_signed_token(aud=API_AUDIENCE), "signature"),
    "hs256 confusion": (lambda auth: auth.hs256_confused_token(aud=API_AUDIENCE), "'HS256' is not allowed"),
    "alg none": (lambda auth: auth.alg_none_token(aud=API_AUDIENCE), "'none' is not allowed"),
    "not a jwt": (lambda auth: "opaque-token", "not a well-formed signed JWT"),
}


@pytest.mark.parametrize("case", BAD_TOKENS, ids=list(BAD_TOKENS))
async def test_bad_access_tokens_are_refused_with_the_reason(auth_server: AuthServer, case: str) -> None:
    make, reason = BAD_TOKENS[case]
    provider = IdentityProvider(settings_for(auth_server), clock=real_time())
    with anyio.fail_after(30):
        assert (await provider.verify_access_token(auth_server.token(aud=API_AUDIENCE)))["sub"] == "alice"
        with pytest.raises(TokenRejected, match=reason):
            await provider.verify_access_token(make(auth_server))


async def test_id_tokens_must_carry_the_nonce_and_name_this_client(auth_server: AuthServer) -> None:
    provider = IdentityProvider(settings_for(auth_server), clock=real_time())
    with anyio.fail_after(30):
        good = auth_server.mint(auth_server.claims(aud=CLIENT_ID, nonce="n-1"))
        assert (await provider.verify_id_token(good, nonce="n-1"))["email"] == "alice@example.com"
        with pytest.raises(TokenRejected, match="nonce"):
            await provider.verify_id_token(good, nonce="n-2")
        with pytest.raises(TokenRejected, match="aud"):
            await provider.verify_id_token(
                auth_server.mint(auth_server.claims(aud=API_AUDIENCE, nonce="n-1")), nonce="n-1"
            )
        shared = auth_server.mint(auth_server.claims(aud=[CLIENT_ID, "other"], nonce="n-1"))
        with pytest.raises(TokenRejected, match="azp"):
            await provider.verify_id_token(shared, nonce="n-1")


async def test_a_new_key_is_fetched_at_a_bounded_rate_and_old_keys_serve_while_the_provider_is_down(
    auth_server: AuthServer,
) -> None:
    clock = real_time()
    provider = IdentityProvider(
        settings_for(auth_server), clock=clock, refresh_interval=timedelta(seconds=30)
    )
    with anyio.fail_after(30):
        await provider.verify_access_token(auth_server.token(aud=API_AUDIENCE))
        assert auth_server.jwks_hits == 1
        rotated = auth_server.rotate("EC")
        with pytest.raises(TokenRejected, match="no key"):  # fetched just now: not again yet
            await provider.verify_access_token(auth_server.token(aud=API_AUDIENCE))
        clock.advance(timedelta(seconds=31))
        claims = await provider.verify_access_token(auth_server.token(aud=API_AUDIENCE))
        assert claims["sub"] == "alice" and auth_server.jwks_hits == 2, rotated
        clock.advance(timedelta(seconds=31))
        for _ in range(20):  # invented key ids cannot make the broker hammer the provider
            with pytest.raises(TokenRejected, match="no key"):
                await provider.verify_access_token(auth_server.unknown_kid_token(aud=API_AUDIENCE))
        assert auth_server.jwks_hits == 3
        auth_server.jwks_mode = "down"
        clock.advance(timedelta(seconds=31))
        with pytest.raises(TokenRejected, match="no key"):
            await provider.verify_access_token(auth_server.unknown_kid_token(aud=API_AUDIENCE))
        assert (await provider.verify_access_token(auth_server.token(aud=API_AUDIENCE)))["sub"] == "alice"


@pytest.mark.parametrize(
    ("part", "mode"), [("jwks", "down"), ("jwks", "garbage"), ("jwks", "empty"), ("metadata", "down")]
)
async def test_without_usable_keys_nothing_verifies_and_the_provider_is_asked_again_only_after_a_while(
    auth_server: AuthServer, part: str, mode: str
) -> None:
    setattr(auth_server, f"{part}_mode", mode)
    clock = real_time()
    provider = IdentityProvider(settings_for(auth_server), clock=clock)
    with anyio.fail_after(30):
        for _ in range(5):
            with pytest.raises(ProviderUnavailable):
                await provider.verify_access_token(auth_server.token(aud=API_AUDIENCE))
        assert getattr(auth_server, f"{part}_hits") == 1
        setattr(auth_server, f"{part}_mode", "ok")
        clock.advance(timedelta(seconds=31))
        assert (await provider.verify_access_token(auth_server.token(aud=API_AUDIENCE)))["sub"] == "alice"


async def test_the_discovery_document_is_read_again_after_a_while_and_kept_while_the_provider_is_down(
    auth_server: AuthServer,
) -> None:
    clock = real_time()
    provider = IdentityProvider(settings_for(auth_server), clock=clock, metadata_max_age=timedelta(minutes=5))
    back = "https://broker.example.com/login"
    with anyio.fail_after(30):
        assert await provider.end_session_url(id_token_hint=None, post_logout_redirect_uri=back) is None
        await provider.verify_access_token(auth_server.token(aud=API_AUDIENCE))
        # The provider turns on RP-initiated logout and moves its keys: followed without a restart.
        auth_server.end_session.enabled = True
        auth_server.jwks_path = "/v2/jwks"
        auth_server.rotate("EC")
        clock.advance(timedelta(minutes=5, seconds=1))
        logout = await provider.end_session_url(id_token_hint=None, post_logout_redirect_uri=back)
        assert logout is not None and logout.startswith(f"{auth_server.issuer}/logout?")
        assert (await provider.verify_access_token(auth_server.token("bob", aud=API_AUDIENCE)))[
            "sub"
        ] == "bob"
        # Its discovery then fails: the document held keeps serving, asked again at a bounded rate.
        auth_server.metadata_mode = "down"
        asked = auth_server.metadata_hits
        clock.advance(timedelta(minutes=5, seconds=1))
        for _ in range(5):
            assert (await provider.metadata()).jwks_uri == f"{auth_server.issuer}/v2/jwks"
        assert auth_server.metadata_hits == asked + 1
        signin = await provider.authorization_url(
            redirect_uri=back, state="state", nonce="nonce", code_verifier="v" * 43
        )
        assert signin.startswith(f"{auth_server.issuer}/authorize?")


async def test_a_discovery_document_for_another_issuer_is_refused(auth_server: AuthServer) -> None:
    provider = IdentityProvider(settings_for(auth_server, issuer=auth_server.issuer + "/"), clock=real_time())
    with anyio.fail_after(30), pytest.raises(ProviderUnavailable, match="names issuer"):
        await provider.metadata()


def test_claims_map_to_approvers_by_email_or_sub_and_groups_only_through_the_map() -> None:
    directory = ApproverDirectory(sso_accounts())
    by_email = SsoSettings(
        issuer="https://idp",
        client_id="c",
        match="email",
        groups_claim="groups",
        groups={"trading-leads": "Traders"},
    )
    matched = match_claims(
        {"sub": "x", "email": "ALICE@example.com", "groups": ["Traders", "admins"]}, directory, by_email
    )
    assert matched.account is not None and matched.account.name == "alice"
    assert matched.groups == {"trading-leads"}  # "admins" names no broker group
    unverified = match_claims(
        {"sub": "x", "email": "alice@example.com", "email_verified": False}, directory, by_email
    )
    assert unverified.account is None and "not verified" in (unverified.refusal or "")
    by_sub = SsoSettings(issuer="https://idp", client_id="c", match="sub")
    assert match_claims({"sub": "alice@example.com"}, directory, by_sub).account is None
    assert provider_groups({"groups": "Traders ops"}, by_email) == {"trading-leads"}
    assert provider_groups({"groups": ["Traders"]}, by_sub) == frozenset()


async def test_the_decisions_api_takes_the_providers_access_tokens(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    feed = ApprovalFeed()
    with anyio.fail_after(60):
        async with sso_broker(auth_server, tmp_path) as running:
            running.broker.approvals.add_listener(feed)

            def api(token: str) -> httpx2.AsyncClient:
                return httpx2.AsyncClient(
                    base_url=running.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
                )

            for bad in (
                auth_server.token(aud="someone-else"),
                auth_server.alg_none_token(aud=API_AUDIENCE),
                auth_server.token("carol", aud=API_AUDIENCE),
            ):
                async with api(bad) as http:
                    refused = await http.get("/api/approvals")
                assert refused.status_code == 401
                assert "identity provider token was refused" in refused.json()["detail"]
            async with running.approver("alice") as http:  # configured approver tokens still work
                assert (await http.get("/api/approvals")).status_code == 200
            async with held_order(running, feed, 3001) as held:
                approval = held.approval
                assert approval is not None
                # Bob is a trading lead only by the provider's groups claim in his token.
                async with api(auth_server.token("bob", aud=API_AUDIENCE)) as http:
                    decided = await http.post(f"/api/approvals/{approval.id}/approve", json={"reason": "ok"})
                assert decided.status_code == 200, decided.text
                assert decided.json()["decided_by"] == "bob"
            assert not held.result.is_error


def test_a_sign_on_session_ends_when_the_approvers_mapping_changes() -> None:
    sso = SsoSettings(issuer="https://idp", client_id="c", match="email")
    web = WebSettings(session_secret="x" * 32, sso=sso)
    alice = ApproverAccount("alice", frozenset({"leads"}), email="alice@example.com")
    credential = credential_of(alice, sso)
    assert credential is not None
    signin = WebSignin(ApproverDirectory([alice]), web)
    cookie = signin.signer.dumps(Session.signed_in("alice", credential, utc_now(), groups=("traders",)))
    viewer = signin.viewer(request("127.0.0.1", cookie=cookie))
    assert viewer.approver is not None and viewer.approver.groups == {"leads", "traders"}
    moved = ApproverDirectory([replace(alice, email="alice@elsewhere.example")])
    assert WebSignin(moved, web).viewer(request("127.0.0.1", cookie=cookie)).account is None
    assert (
        WebSignin(ApproverDirectory([alice]), replace(web, sso=None))
        .viewer(request("127.0.0.1", cookie=cookie))
        .account
        is None
    )


@pytest.mark.parametrize("kind", ["jwt", "opaque"])
async def test_the_cli_decides_with_the_providers_access_token(
    auth_server: AuthServer, tmp_path: Path, kind: str
) -> None:
    feed = ApprovalFeed()
    sso = register_inbox_client(auth_server)
    if kind == "jwt":
        good, bad, reason = (
            auth_server.token("bob", aud=API_AUDIENCE),
            auth_server.expired_token("bob", aud=API_AUDIENCE),
            "expired",
        )
    else:
        sso = introspecting(auth_server, sso)
        good, bad, reason = auth_server.opaque_token("bob", aud=API_AUDIENCE), "made-up-token", "not active"
    with anyio.fail_after(90):
        async with sso_broker(auth_server, tmp_path, sso) as running:
            running.broker.approvals.add_listener(feed)
            as_bob = ["--url", running.url, "--token", good]
            async with held_order(running, feed, 3002) as held:
                approval = held.approval
                assert approval is not None
                code, out, err = await cli("approvals", "list", "--url", running.url, "--token", bad)
                assert code != 0 and reason in err, (out, err)
                code, out, err = await cli("approvals", "list", *as_bob)
                assert code == 0 and approval.id in out, err
                code, out, err = await cli("approvals", "deny", approval.id, "--reason", "not today", *as_bob)
                assert code == 0 and f"{approval.id}: denied by bob" in out, err
            assert held.result.is_error and "not today" in text_of(held.result)


def test_a_quorum_only_the_providers_groups_reach_lets_the_broker_start(tmp_path: Path) -> None:
    """Bob is a trading lead only through the provider: the start-up check must count him."""
    policy = (
        'version: "1"\ndefault: deny\nrules:\n  - tool: place_order\n    action: require_approval\n'
        '    approvers: ["@trading-leads"]\n    quorum: 2\n'
    )
    settings = make_settings(tmp_path, policy, exchange_server(), approvers=sso_accounts())
    with pytest.raises(ConfigError, match="quorum"):
        Broker(settings, environ={})
    sso = SsoSettings(issuer="https://idp", client_id="c", match="email", groups={"trading-leads": "traders"})
    assert Broker(replace(settings, web=WebSettings(sso=sso)), environ={}).identity_provider is not None
