"""Opaque tokens explained by the local authorization server's RFC 7662 endpoint."""

from __future__ import annotations

import hashlib
import logging

import pytest

from broker.config.oauth import IntrospectionSettings, OAuthSettings
from broker.proxy.auth.api_keys import AgentCredential
from broker.proxy.auth.build import agent_verifier
from broker.proxy.auth.model import AgentIdentity, AgentVerifier, Challenge
from tests.authserver.server import AuthServer

pytestmark = pytest.mark.anyio

RESOURCE = "http://broker.test/mcp"


def verifier(auth: AuthServer, *, secret: str | None = None, cache_seconds: float = 60) -> AgentVerifier:
    client_id, real_secret = auth.register_client(client_id="broker", grant_types=())
    oauth = OAuthSettings(
        issuer=auth.issuer,
        resource=RESOURCE,
        required_scopes=("tools:call",),
        introspection=IntrospectionSettings(
            f"{auth.url}/introspect", client_id, secret or real_secret, cache_seconds
        ),
    )
    credentials = {"bot": AgentCredential("bot", hashlib.sha256(b"key-bot").hexdigest())}
    return agent_verifier(credentials, allow_anonymous=False, oauth=oauth)


def bearer(token: str) -> bytes:
    return f"Bearer {token}".encode()


async def test_an_active_opaque_token_names_its_agent_and_is_remembered(auth_server: AuthServer) -> None:
    chain = verifier(auth_server)
    token = auth_server.opaque_token("bob", aud=RESOURCE, scope="tools:call trade")
    for _ in range(3):
        identity = await chain.verify(bearer(token))
        assert isinstance(identity, AgentIdentity)
        assert identity.agent == "bob" and identity.method == "introspection"
        assert identity.scopes == {"tools:call", "trade"}
    assert auth_server.introspection_hits == 1
    # API keys and JWTs keep their own paths beside introspection.
    assert isinstance(await chain.verify(b"Bearer key-bot"), AgentIdentity)
    assert isinstance(await chain.verify(bearer(auth_server.token("carol", aud=RESOURCE))), AgentIdentity)
    assert auth_server.introspection_hits == 1


async def test_a_revoked_token_stops_once_the_cache_time_is_over(auth_server: AuthServer) -> None:
    chain = verifier(auth_server, cache_seconds=0)
    token = auth_server.opaque_token("bob", aud=RESOURCE)
    assert isinstance(await chain.verify(bearer(token)), AgentIdentity)
    auth_server.revoke(token)
    assert isinstance(await chain.verify(bearer(token)), Challenge)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown", "not active"),
        ("wrong-aud", "aud"),
        ("narrow-scope", "lacks scopes tools:call"),
        ("bad-client-secret", "HTTP 401"),
        ("endpoint-down", "unreachable"),
    ],
)
async def test_refusals_are_401_or_403_with_a_log_line(
    auth_server: AuthServer, caplog: pytest.LogCaptureFixture, case: str, reason: str
) -> None:
    chain = verifier(auth_server, secret="wrong" if case == "bad-client-secret" else None)
    token = {
        "unknown": "made-up-token",
        "wrong-aud": auth_server.opaque_token(aud="http://other.test/mcp"),
        "narrow-scope": auth_server.opaque_token(aud=RESOURCE, scope="tools:read"),
    }.get(case) or auth_server.opaque_token(aud=RESOURCE)
    if case == "endpoint-down":
        auth_server.stop()
    with caplog.at_level(logging.WARNING, logger="broker.proxy.auth"):
        answer = await chain.verify(bearer(token))
    assert isinstance(answer, Challenge)
    assert answer.status == (403 if case == "narrow-scope" else 401)
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert reason in logged and token not in logged
