"""Every bad token the issue names ends in a 401 challenge and a log line; good ones name the agent.

The tokens come from the real local authorization server (tests/authserver) and the keys from its
real JWKS endpoint, found by discovery."""

from __future__ import annotations

import hashlib
import logging

import pytest
from joserfc import jws

from broker.config.oauth import OAuthSettings
from broker.net.jwks import JwksCache
from broker.proxy.auth.api_keys import AgentCredential
from broker.proxy.auth.build import agent_verifier
from broker.proxy.auth.chain import ChainVerifier
from broker.proxy.auth.jwt import JwtVerifier
from broker.proxy.auth.model import AgentIdentity, Challenge
from tests.authserver.server import AuthServer

pytestmark = pytest.mark.anyio

RESOURCE = "http://broker.test/mcp"
METADATA = "http://broker.test/.well-known/oauth-protected-resource/mcp"


def settings(auth: AuthServer, **overrides: object) -> OAuthSettings:
    values: dict[str, object] = {
        "issuer": auth.issuer,
        "resource": RESOURCE,
        "required_scopes": ("tools:call",),
    }
    values.update(overrides)
    return OAuthSettings(**values)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier(auth: AuthServer, monotonic: Clock | None = None, **overrides: object) -> ChainVerifier:
    oauth = settings(auth, **overrides)
    keys = JwksCache(oauth.issuer, min_refresh=30, monotonic=monotonic or Clock())
    api = agent_verifier(
        {"bot": AgentCredential("bot", hashlib.sha256(b"key-bot").hexdigest())},
        allow_anonymous=False,
        oauth=None,
    )
    return ChainVerifier(api, JwtVerifier(oauth, keys))  # type: ignore[arg-type]


def bearer(token: str) -> bytes:
    return f"Bearer {token}".encode()


def refused(answer: AgentIdentity | Challenge, *, status: int = 401) -> str:
    assert isinstance(answer, Challenge), answer
    assert answer.status == status
    header = answer.www_authenticate.decode()
    assert header.startswith("Bearer ")
    assert f'resource_metadata="{METADATA}"' in header and 'scope="tools:call"' in header
    return header


async def test_a_good_token_names_the_agent_and_carries_claims(auth_server: AuthServer) -> None:
    chain = verifier(auth_server)
    identity = await chain.verify(bearer(auth_server.token("bob", aud=RESOURCE, scope="tools:call trade")))
    assert isinstance(identity, AgentIdentity)
    assert identity.agent == "bob" and identity.method == "jwt"
    assert identity.scopes == {"tools:call", "trade"}
    assert identity.claims["groups"] == ["trading-leads"]
    # An audience list naming the broker among others is fine too; so is an EC-signed token.
    auth_server.use_key("ec-1")
    listed = await chain.verify(bearer(auth_server.token("carol", aud=[RESOURCE, "other"])))
    assert isinstance(listed, AgentIdentity) and listed.agent == "carol"


def signed_payload(auth: AuthServer, payload: bytes) -> str:
    """Signed with the issuer's real key, so only the payload check can refuse it."""
    key = auth.keys.get_by_kid(auth.signing_kid)
    return jws.serialize_compact({"alg": auth.signing_alg, "kid": auth.signing_kid}, payload, key)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda a: a.expired_token(aud=RESOURCE), "expired"),
        (lambda a: a.not_yet_valid_token(aud=RESOURCE), "not yet valid"),
        (lambda a: a.wrong_issuer_token(aud=RESOURCE), "iss"),
        (lambda a: a.token(aud="http://someone-else.test/mcp"), "aud"),
        (lambda a: a.token(), "aud"),
        (lambda a: a.unknown_kid_token(aud=RESOURCE), "no signing key"),
        (lambda a: a.wrongly_signed_token(aud=RESOURCE), "signature"),
        (lambda a: a.hs256_confused_token(aud=RESOURCE), "algorithm 'HS256' is not allowed"),
        (lambda a: a.alg_none_token(aud=RESOURCE), "algorithm 'none' is not allowed"),
        (lambda a: a.token(aud=RESOURCE, exp=None), "exp"),
        (lambda a: "not.a.jwt", "not a well-formed JWT"),
        (lambda a: "opaque-or-unknown-key", "unknown API key"),
        (lambda a: signed_payload(a, b"[1, 2]"), "not a JSON object"),
        (lambda a: signed_payload(a, b"{not json"), "not JSON"),
    ],
    ids=[
        "expired",
        "nbf-future",
        "wrong-iss",
        "wrong-aud",
        "no-aud",
        "unknown-kid",
        "wrongly-signed",
        "hs256-confusion",
        "alg-none",
        "no-exp",
        "garbage",
        "not-a-jwt",
        "signed-array",
        "signed-garbage",
    ],
)
async def test_bad_tokens_are_refused_with_a_challenge_and_a_log_line(
    auth_server: AuthServer, caplog: pytest.LogCaptureFixture, make: object, reason: str
) -> None:
    token = make(auth_server)  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="broker.proxy.auth"):
        header = refused(await verifier(auth_server).verify(bearer(token)))
    assert 'error="invalid_token"' in header
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert reason in logged or reason in header, (logged, header)
    assert token not in logged


async def test_missing_header_and_other_schemes(auth_server: AuthServer) -> None:
    chain = verifier(auth_server)
    header = refused(await chain.verify(None))
    assert "error=" not in header  # RFC 6750 3.1: no error code when no credentials came
    refused(await chain.verify(b"Basic Ym9iOnNlY3JldA=="))
    refused(await chain.verify(b"Bearer "))


async def test_missing_scope_is_403_insufficient_scope(auth_server: AuthServer) -> None:
    answer = await verifier(auth_server).verify(bearer(auth_server.token(aud=RESOURCE, scope="tools:read")))
    header = refused(answer, status=403)
    assert 'error="insufficient_scope"' in header


async def test_api_keys_keep_working_beside_tokens(auth_server: AuthServer) -> None:
    identity = await verifier(auth_server).verify(b"Bearer key-bot")
    assert isinstance(identity, AgentIdentity) and identity.agent == "bot" and identity.method == "api_key"


@pytest.mark.parametrize(
    ("claim", "agent"), [("sub", "alice"), ("client_id", "ide-1"), ("email", "alice@example.com")]
)
async def test_the_agent_name_comes_from_the_configured_claim(
    auth_server: AuthServer, claim: str, agent: str
) -> None:
    chain = verifier(auth_server, agent_claim=claim)
    identity = await chain.verify(bearer(auth_server.token("alice", aud=RESOURCE, client_id="ide-1")))
    assert isinstance(identity, AgentIdentity) and identity.agent == agent


async def test_client_id_falls_back_to_azp_and_a_missing_claim_refuses(auth_server: AuthServer) -> None:
    chain = verifier(auth_server, agent_claim="client_id")
    token = auth_server.token("alice", aud=RESOURCE, client_id=None, azp="assistant")
    identity = await chain.verify(bearer(token))
    assert isinstance(identity, AgentIdentity) and identity.agent == "assistant"
    refused(await verifier(auth_server, agent_claim="tenant").verify(bearer(auth_server.token(aud=RESOURCE))))


async def test_jwks_down_or_garbage_before_any_fetch_fails_closed(auth_server: AuthServer) -> None:
    for mode in ("down", "garbage", "empty"):
        auth_server.jwks_mode = mode
        refused(await verifier(auth_server).verify(bearer(auth_server.token(aud=RESOURCE))))
    auth_server.jwks_mode = "ok"
    auth_server.metadata_mode = "garbage"
    refused(await verifier(auth_server).verify(bearer(auth_server.token(aud=RESOURCE))))
    auth_server.stop()
    refused(await verifier(auth_server).verify(bearer(auth_server.token(aud=RESOURCE))))


async def test_cached_keys_serve_while_the_provider_is_down(auth_server: AuthServer) -> None:
    clock = Clock()
    chain = verifier(auth_server, clock)
    assert isinstance(await chain.verify(bearer(auth_server.token(aud=RESOURCE))), AgentIdentity)
    auth_server.stop()
    clock.now += 7200  # past max_age: a refresh is due and fails, the old keys stay
    assert isinstance(await chain.verify(bearer(auth_server.token("bob", aud=RESOURCE))), AgentIdentity)


async def test_keys_that_move_are_followed_and_a_metadata_outage_keeps_the_last_key_url(
    auth_server: AuthServer,
) -> None:
    clock = Clock()
    chain = verifier(auth_server, clock)
    assert isinstance(await chain.verify(bearer(auth_server.token(aud=RESOURCE))), AgentIdentity)
    # The provider moves its key set and rotates: the broker finds the new place without a restart.
    auth_server.jwks_path = "/v2/jwks"
    auth_server.rotate("EC")
    clock.now += 31
    moved = await chain.verify(bearer(auth_server.token("bob", aud=RESOURCE)))
    assert isinstance(moved, AgentIdentity) and moved.agent == "bob"
    # Its metadata then goes down while it rotates again: the last key URL found still serves.
    auth_server.metadata_mode = "down"
    auth_server.rotate("RSA")
    clock.now += 31
    again = await chain.verify(bearer(auth_server.token("carol", aud=RESOURCE)))
    assert isinstance(again, AgentIdentity) and again.agent == "carol"


async def test_rotation_refetches_once_and_unknown_kids_refetch_at_a_bounded_rate(
    auth_server: AuthServer,
) -> None:
    clock = Clock()
    chain = verifier(auth_server, clock)
    assert isinstance(await chain.verify(bearer(auth_server.token(aud=RESOURCE))), AgentIdentity)
    fetched = auth_server.jwks_hits
    clock.now += 31
    auth_server.rotate("EC")
    rotated = await chain.verify(bearer(auth_server.token("bob", aud=RESOURCE)))
    assert isinstance(rotated, AgentIdentity) and rotated.agent == "bob"
    assert auth_server.jwks_hits == fetched + 1

    for n in range(50):
        refused(await chain.verify(bearer(auth_server.unknown_kid_token(f"forger-{n}", aud=RESOURCE))))
    assert auth_server.jwks_hits == fetched + 1  # within min_refresh of the last fetch: none
    clock.now += 31
    refused(await chain.verify(bearer(auth_server.unknown_kid_token(aud=RESOURCE))))
    assert auth_server.jwks_hits == fetched + 2


async def test_a_remembered_token_still_expires(auth_server: AuthServer) -> None:
    wall = Clock()
    wall.now = __import__("time").time()
    oauth = settings(auth_server, leeway_seconds=0)
    tokens = JwtVerifier(oauth, JwksCache(oauth.issuer), clock=wall)
    token = auth_server.token(aud=RESOURCE, lifetime=60).encode()
    assert isinstance(await tokens.verify_token(token), AgentIdentity)
    wall.now += 61
    assert isinstance(await tokens.verify_token(token), Challenge)
