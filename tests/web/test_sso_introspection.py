"""Approvers' opaque access tokens, explained by the local authorization server's RFC 7662 endpoint:
through the decisions API (and the CLI: test_sso_tokens.py) they decide as the approver they name; inactive, foreign,
expired or unverifiable ones are a 401 with the reason and a log line, and decide nothing."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import replace
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest

from broker.approvals import ApprovalStatus
from broker.approvals.approvers import ApproverDirectory
from broker.approvals.model import Approver
from broker.channels.sso.api_tokens import SsoApproverTokens
from broker.channels.sso.provider import IdentityProvider
from broker.config.oauth import IntrospectionSettings
from broker.config.sso import SsoSettings
from tests.authserver.server import AuthServer
from tests.e2e.harness import RunningBroker
from tests.web.sso_support import (
    API_AUDIENCE,
    held_order,
    introspecting,
    register_inbox_client,
    sso_accounts,
    sso_broker,
)
from tests.web.support import ApprovalFeed
from tests.web.test_sso_tokens import real_time

pytestmark = pytest.mark.anyio

LOGGER = "broker.channels.sso"


def api(running: RunningBroker, token: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=running.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


async def still_pending(running: RunningBroker, approval_id: str) -> bool:
    async with running.approver("alice") as http:
        shown = await http.get(f"/api/approvals/{approval_id}")
    return bool(shown.json()["status"] == ApprovalStatus.PENDING.value)


async def test_an_opaque_token_decides_as_its_approver_and_bad_ones_decide_nothing(
    auth_server: AuthServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed = ApprovalFeed()
    revoked = auth_server.opaque_token("bob", aud=API_AUDIENCE)
    auth_server.revoke(revoked)
    bad = {
        "made-up-token": "the token is not active",
        revoked: "the token is not active",
        auth_server.opaque_token("bob", aud="someone-else"): "not meant for this broker (aud)",
        auth_server.opaque_token("bob"): "names no audience",
        auth_server.opaque_token("carol", aud=API_AUDIENCE): "carol@example.com is not an approver",
    }
    with anyio.fail_after(60):
        async with sso_broker(
            auth_server, tmp_path, introspecting(auth_server, register_inbox_client(auth_server))
        ) as running:
            running.broker.approvals.add_listener(feed)
            async with held_order(running, feed, 3101) as held:
                approval = held.approval
                assert approval is not None
                for token, reason in bad.items():
                    caplog.clear()
                    with caplog.at_level(logging.WARNING, logger=LOGGER):
                        async with api(running, token) as http:
                            refused = await http.post(f"/api/approvals/{approval.id}/approve", json={})
                    assert refused.status_code == 401, refused.text
                    assert reason in refused.json()["detail"]
                    logged = " ".join(record.getMessage() for record in caplog.records)
                    assert reason in logged and token not in logged
                assert await still_pending(running, approval.id)
                async with running.approver("alice") as http:  # configured approver tokens still work
                    assert (await http.get("/api/approvals")).status_code == 200
                # Bob is a trading lead only by the groups in the introspection answer.
                bob = auth_server.opaque_token("bob", aud=API_AUDIENCE)
                asked = auth_server.introspection_hits
                async with api(running, bob) as http:
                    assert (await http.get("/api/approvals")).status_code == 200
                    decided = await http.post(f"/api/approvals/{approval.id}/approve", json={"reason": "ok"})
                assert decided.status_code == 200, decided.text
                assert decided.json()["decided_by"] == "bob"
                assert auth_server.introspection_hits == asked + 1  # the active answer was reused
            assert not held.result.is_error


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong-secret", "HTTP 401"),
        ("down", "unreachable"),
        # No endpoint configured and the discovery document names none.
        ("not-announced", "announces no introspection_endpoint; set web.sso.introspection.endpoint"),
    ],
)
async def test_an_endpoint_that_refuses_the_broker_is_down_or_unknown_is_a_401(
    auth_server: AuthServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str, reason: str
) -> None:
    endpoint = None
    if case == "down":
        with socket.socket() as closed:  # a port nobody listens on once this block ends
            closed.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}/introspect"
    if case == "not-announced":
        auth_server.announces_introspection = False
        sso = discovering(auth_server)
    else:
        sso = introspecting(
            auth_server,
            register_inbox_client(auth_server),
            secret="wrong" if case == "wrong-secret" else None,
            endpoint=endpoint,
        )
    feed = ApprovalFeed()
    with anyio.fail_after(60):
        async with sso_broker(auth_server, tmp_path, sso) as running:
            running.broker.approvals.add_listener(feed)
            async with held_order(running, feed, 3102) as held:
                approval = held.approval
                assert approval is not None
                with caplog.at_level(logging.WARNING, logger=LOGGER):
                    async with api(running, auth_server.opaque_token("bob", aud=API_AUDIENCE)) as http:
                        refused = await http.post(f"/api/approvals/{approval.id}/approve", json={})
                assert refused.status_code == 401 and reason in refused.json()["detail"], refused.text
                assert reason in caplog.text
                assert await still_pending(running, approval.id)
                async with running.approver("alice") as http:
                    await http.post(f"/api/approvals/{approval.id}/deny", json={})
            assert held.result.is_error
    assert case != "not-announced" or auth_server.introspection_hits == 0


def tokens(auth: AuthServer, sso: SsoSettings, **options: object) -> SsoApproverTokens:
    provider = IdentityProvider(sso, clock=real_time())
    return SsoApproverTokens(provider, ApproverDirectory(sso_accounts()), **options)  # type: ignore[arg-type]


async def test_answers_are_reused_only_briefly_and_never_past_expiry(auth_server: AuthServer) -> None:
    now = [time.time()]
    approvers = tokens(
        auth_server, introspecting(auth_server, register_inbox_client(auth_server)), clock=lambda: now[0]
    )
    token = auth_server.opaque_token("bob", aud=API_AUDIENCE)
    with anyio.fail_after(30):
        assert await approvers.approver(token) == Approver("bob", frozenset({"trading-leads"}))
        auth_server.revoke(token)
        now[0] += 29  # within cache_seconds: the answer is reused, the provider not asked
        assert isinstance(await approvers.approver(token), Approver)
        assert auth_server.introspection_hits == 1
        now[0] += 2
        assert "not active" in str(await approvers.approver(token))
        # The provider still calls this one active, but its exp (an hour) is past for the broker.
        late = auth_server.opaque_token("bob", aud=API_AUDIENCE)
        now[0] += auth_server.token_lifetime + 120
        assert "the token is expired" in str(await approvers.approver(late))


async def test_an_answer_from_another_issuer_is_refused(auth_server: AuthServer) -> None:
    with AuthServer() as other:
        client_id, secret = other.register_client(client_id="broker-api", grant_types=())
        sso = replace(
            register_inbox_client(auth_server),
            introspection=IntrospectionSettings(f"{other.url}/introspect", client_id, secret, 30.0),
        )
        with anyio.fail_after(30):
            refused = await tokens(auth_server, sso).approver(other.opaque_token("bob", aud=API_AUDIENCE))
    assert isinstance(refused, str) and f"names issuer {other.issuer!r}" in refused


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (200, b"<html>sign in</html>", "did not answer JSON"),
        (200, b"[true]", "did not answer a JSON object"),
        (200, b'{"active": "true", "sub": "bob", "aud": "mcp-broker-api"}', "not active"),
        (500, b'{"active": true}', "answered HTTP 500"),
    ],
)
async def test_a_garbage_answer_is_a_refusal(
    auth_server: AuthServer, status: int, body: bytes, reason: str
) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))
    sso = introspecting(auth_server, register_inbox_client(auth_server))
    with anyio.fail_after(30):
        refused = await tokens(auth_server, sso, transport=transport).approver("some-opaque-token")
    assert isinstance(refused, str) and reason in refused


async def test_an_absurd_expiry_is_no_crash(auth_server: AuthServer) -> None:
    answer = b'{"active": true, "aud": "mcp-broker-api", "email": "bob@example.com", "exp": 1%s}' % (
        b"0" * 400
    )
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=answer))
    sso = introspecting(auth_server, register_inbox_client(auth_server))
    with anyio.fail_after(30):
        assert await tokens(auth_server, sso, transport=transport).approver("some-opaque-token") == Approver(
            "bob", frozenset()
        )


def discovering(auth: AuthServer) -> SsoSettings:
    """`introspecting`, with no endpoint configured: it comes from the discovery document."""
    sso = introspecting(auth, register_inbox_client(auth))
    assert sso.introspection is not None
    return replace(sso, introspection=replace(sso.introspection, endpoint=None))


async def test_without_an_endpoint_the_discovered_one_is_asked(auth_server: AuthServer) -> None:
    approvers = tokens(auth_server, discovering(auth_server))
    with anyio.fail_after(30):
        assert await approvers.approver(auth_server.opaque_token("bob", aud=API_AUDIENCE)) == Approver(
            "bob", frozenset({"trading-leads"})
        )
        assert "not active" in str(await approvers.approver("made-up-token"))
    assert auth_server.introspection_hits == 2
