"""The verifier `/mcp` uses, from settings: API keys only, or API keys beside OAuth access tokens."""

from __future__ import annotations

from collections.abc import Mapping

from broker.config.oauth import OAuthSettings
from broker.net.jwks import JwksCache
from broker.proxy.auth.api_keys import AgentCredential, ApiKeyVerifier
from broker.proxy.auth.chain import ChainVerifier
from broker.proxy.auth.introspection import Introspector
from broker.proxy.auth.jwt import JwtVerifier
from broker.proxy.auth.model import AgentVerifier, bearer_challenge

API_KEY_REFUSAL = bearer_challenge(
    401,
    "Unauthorized: present a valid agent API key as 'Authorization: Bearer <key>'",
    realm="mcp-approval-broker",
)


def agent_verifier(
    credentials: Mapping[str, AgentCredential], *, allow_anonymous: bool, oauth: OAuthSettings | None
) -> AgentVerifier:
    api_keys = ApiKeyVerifier(credentials, API_KEY_REFUSAL, allow_anonymous=allow_anonymous)
    if oauth is None:
        return api_keys
    keys = JwksCache(
        oauth.issuer,
        jwks_uri=oauth.jwks_uri,
        max_age=oauth.jwks_max_age_seconds,
        min_refresh=oauth.jwks_min_refresh_seconds,
    )
    introspector = Introspector(oauth, oauth.introspection) if oauth.introspection is not None else None
    return ChainVerifier(api_keys, JwtVerifier(oauth, keys), introspector)
