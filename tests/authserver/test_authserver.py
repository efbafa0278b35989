"""The local authorization server does what the broker's OAuth tests rely on."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from tests.authserver.server import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE, AuthServer

RESOURCE = "http://broker.test/mcp"
REDIRECT = "http://127.0.0.1:1/callback"


def keys(auth: AuthServer) -> KeySet:
    return KeySet.import_key_set(httpx.get(f"{auth.url}/jwks").json())


def decode(auth: AuthServer, token: str) -> dict[str, object]:
    return dict(jwt.decode(token, keys(auth), algorithms=["RS256", "ES256"]).claims)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def register_public_client(auth: AuthServer) -> str:
    answer = httpx.post(
        f"{auth.url}/register",
        json={
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "client_name": "test",
        },
    )
    assert answer.status_code == 201, answer.text
    assert "client_secret" not in answer.json()
    return str(answer.json()["client_id"])


def authorize(auth: AuthServer, client_id: str, challenge: str, **extra: str) -> httpx.Response:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid tools:call",
        "state": "s1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": RESOURCE,
        **extra,
    }
    return httpx.get(f"{auth.url}/authorize", params=params)


def redeem(auth: AuthServer, client_id: str, code: str, verifier: str) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
        "resource": RESOURCE,
    }
    return httpx.post(f"{auth.url}/token", data=data)


def test_discovery_documents_agree_and_name_the_endpoints(auth_server: AuthServer) -> None:
    rfc8414 = httpx.get(f"{auth_server.url}/.well-known/oauth-authorization-server").json()
    oidc = httpx.get(f"{auth_server.url}/.well-known/openid-configuration").json()
    assert rfc8414 == oidc
    assert rfc8414["issuer"] == auth_server.issuer
    assert rfc8414["code_challenge_methods_supported"] == ["S256"]
    assert TOKEN_EXCHANGE in rfc8414["grant_types_supported"]
    published = httpx.get(rfc8414["jwks_uri"]).json()["keys"]
    assert {key["kty"] for key in published} == {"RSA", "EC"}
    assert all("d" not in key for key in published)


def test_code_flow_with_pkce_gives_resource_bound_tokens_id_token_and_refresh(
    auth_server: AuthServer,
) -> None:
    client_id = register_public_client(auth_server)
    verifier, challenge = pkce()
    redirect = authorize(auth_server, client_id, challenge, login_hint="bob")
    assert redirect.status_code == 302
    query = parse_qs(urlparse(redirect.headers["location"]).query)
    assert query["state"] == ["s1"]
    code = query["code"][0]

    wrong = redeem(auth_server, client_id, code, "x" * 50)
    assert wrong.status_code == 400

    redirect = authorize(auth_server, client_id, challenge, login_hint="bob")
    code = parse_qs(urlparse(redirect.headers["location"]).query)["code"][0]
    token = redeem(auth_server, client_id, code, verifier)
    assert token.status_code == 200, token.text
    body = token.json()
    access = decode(auth_server, body["access_token"])
    assert access["sub"] == "bob" and access["aud"] == RESOURCE and access["iss"] == auth_server.issuer
    assert access["scope"] == "openid tools:call" and access["groups"] == ["trading-leads"]
    identity = decode(auth_server, body["id_token"])
    assert identity["sub"] == "bob" and identity["email"] == "bob@example.com"
    assert identity["aud"] == [client_id]

    refreshed = httpx.post(
        f"{auth_server.url}/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": client_id},
    )
    assert refreshed.status_code == 200, refreshed.text
    assert decode(auth_server, refreshed.json()["access_token"])["aud"] == RESOURCE
    replay = httpx.post(
        f"{auth_server.url}/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": client_id},
    )
    assert replay.status_code == 400


def test_authorize_refuses_a_request_without_pkce(auth_server: AuthServer) -> None:
    client_id = register_public_client(auth_server)
    answer = httpx.get(
        f"{auth_server.url}/authorize",
        params={"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "state": "s"},
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"


def test_client_credentials_token_exchange_and_introspection(auth_server: AuthServer) -> None:
    client_id, secret = auth_server.register_client()
    token = httpx.post(
        f"{auth_server.url}/token",
        data={"grant_type": "client_credentials", "scope": "tools:call", "resource": RESOURCE},
        auth=(client_id, secret),
    )
    assert token.status_code == 200, token.text
    claims = decode(auth_server, token.json()["access_token"])
    assert claims["sub"] == client_id and claims["aud"] == RESOURCE and "refresh_token" not in token.json()
    assert (
        httpx.post(
            f"{auth_server.url}/token", data={"grant_type": "client_credentials"}, auth=(client_id, "wrong")
        ).status_code
        == 401
    )

    exchanged = httpx.post(
        f"{auth_server.url}/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": auth_server.token("carol", aud=RESOURCE),
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "resource": "http://upstream.test/mcp",
        },
        auth=(client_id, secret),
    )
    assert exchanged.status_code == 200, exchanged.text
    assert exchanged.json()["issued_token_type"] == ACCESS_TOKEN_TYPE
    swapped = decode(auth_server, exchanged.json()["access_token"])
    assert swapped["sub"] == "carol" and swapped["aud"] == "http://upstream.test/mcp"
    assert swapped["act"] == {"sub": client_id}
    forged = httpx.post(
        f"{auth_server.url}/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": auth_server.wrongly_signed_token(),
            "subject_token_type": ACCESS_TOKEN_TYPE,
        },
        auth=(client_id, secret),
    )
    assert forged.status_code == 400

    opaque = auth_server.opaque_token("alice", aud=RESOURCE, scope="tools:call trade")
    seen = httpx.post(
        f"{auth_server.url}/introspect", data={"token": opaque}, auth=(client_id, secret)
    ).json()
    assert seen["active"] is True and seen["sub"] == "alice" and seen["aud"] == RESOURCE
    assert seen["scope"] == "tools:call trade"
    auth_server.revoke(opaque)
    gone = httpx.post(
        f"{auth_server.url}/introspect", data={"token": opaque}, auth=(client_id, secret)
    ).json()
    assert gone == {"active": False}
    assert httpx.post(f"{auth_server.url}/introspect", data={"token": opaque}).status_code == 401


def test_bad_tokens_fail_a_careful_validator(auth_server: AuthServer) -> None:
    published = keys(auth_server)
    good = auth_server.token(aud=RESOURCE)
    assert jwt.decode(good, published, algorithms=["RS256"]).claims["aud"] == RESOURCE
    for bad in (
        auth_server.unknown_kid_token(aud=RESOURCE),
        auth_server.wrongly_signed_token(aud=RESOURCE),
        auth_server.hs256_confused_token(aud=RESOURCE),
        auth_server.alg_none_token(aud=RESOURCE),
    ):
        with pytest.raises((JoseError, ValueError)):
            jwt.decode(bad, published, algorithms=["RS256", "ES256"])
    expired = jwt.decode(auth_server.expired_token(aud=RESOURCE), published, algorithms=["RS256"])
    early = jwt.decode(auth_server.not_yet_valid_token(aud=RESOURCE), published, algorithms=["RS256"])
    for decoded in (expired, early):
        with pytest.raises(JoseError):
            jwt.JWTClaimsRegistry().validate(decoded.claims)
    assert (
        jwt.decode(auth_server.wrong_issuer_token(), published, algorithms=["RS256"]).claims["iss"]
        != auth_server.issuer
    )


def test_knobs_rotation_and_restart(auth_server: AuthServer) -> None:
    auth_server.jwks_mode = "down"
    assert httpx.get(f"{auth_server.url}/jwks").status_code == 503
    auth_server.jwks_mode = "garbage"
    with pytest.raises(json.JSONDecodeError):
        httpx.get(f"{auth_server.url}/jwks").json()
    auth_server.jwks_mode = "ok"
    assert auth_server.jwks_hits == 2

    new = auth_server.rotate("EC")
    token = auth_server.token(aud=RESOURCE)
    assert jwt.decode(token, keys(auth_server), algorithms=["ES256"]).header["kid"] == new
    auth_server.retire("rsa-1")
    assert [key["kid"] for key in httpx.get(f"{auth_server.url}/jwks").json()["keys"]] == ["ec-1", new]

    url = auth_server.url
    auth_server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/jwks")
    auth_server.start()
    assert auth_server.url == url
    assert httpx.get(f"{url}/jwks").status_code == 200
