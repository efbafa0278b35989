"""The `oauth:` section: agents present access tokens from an OAuth 2.1 authorization server.

    oauth:
      issuer: https://login.example.com/realms/agents   # must equal the tokens' `iss`
      resource: https://broker.example.com/mcp           # this broker; the tokens' `aud` must name it
      required_scopes: [mcp:tools]                        # a token without them gets 403 insufficient_scope
      agent_claim: client_id                              # sub | client_id (falls back to azp) | any claim
      algorithms: [RS256, ES256]                          # asymmetric only: never none, never HS*
      leeway_seconds: 30                                  # clock skew allowed on exp / nbf
      jwks_uri: null                                      # default: discovered from the issuer's metadata
      jwks_max_age_seconds: 3600                          # keys are refetched after this long
      jwks_min_refresh_seconds: 30                        # at most one refetch this often for an unknown kid
      introspection:                                      # optional: opaque tokens, asked of RFC 7662
        endpoint: https://login.example.com/introspect
        client_id: broker
        client_secret_env: BROKER_INTROSPECTION_SECRET
        cache_seconds: 60                                 # an active answer is reused this long at most

Without the section the broker takes API keys only, as before; with it, API keys keep working
beside tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class IntrospectionEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str
    client_id: str
    client_secret_env: str
    cache_seconds: float = Field(default=60.0, ge=0, le=3600)


class OAuthEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    issuer: str
    resource: str
    required_scopes: list[str] = []
    agent_claim: str = "sub"
    algorithms: list[str] = ["RS256", "ES256"]
    leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    jwks_uri: str | None = None
    jwks_max_age_seconds: float = Field(default=3600.0, gt=0)
    jwks_min_refresh_seconds: float = Field(default=30.0, ge=0)
    resource_name: str = "MCP approval broker"
    introspection: IntrospectionEntry | None = None

    @field_validator("issuer", "resource", "jwks_uri")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
            raise ValueError(f"{value!r} is not an absolute http(s) URL without a fragment")
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: list[str]) -> list[str]:
        # `none` and the HMAC family would let anyone who knows a public key sign tokens.
        refused = [alg for alg in value if alg not in ASYMMETRIC_ALGORITHMS]
        if refused or not value:
            raise ValueError(
                f"not allowed: {refused or 'an empty list'}; use {sorted(ASYMMETRIC_ALGORITHMS)}"
            )
        return value


@dataclass(frozen=True)
class IntrospectionSettings:
    endpoint: str | None
    """None (approvers' SSO only): the ``introspection_endpoint`` of the issuer's discovery document."""
    client_id: str
    client_secret: str
    cache_seconds: float = 60.0


@dataclass(frozen=True)
class OAuthSettings:
    issuer: str
    resource: str
    required_scopes: tuple[str, ...] = ()
    agent_claim: str = "sub"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_seconds: float = 30.0
    jwks_uri: str | None = None
    jwks_max_age_seconds: float = 3600.0
    jwks_min_refresh_seconds: float = 30.0
    resource_name: str = "MCP approval broker"
    introspection: IntrospectionSettings | None = None

    @property
    def resource_metadata_url(self) -> str:
        """RFC 9728 section 3.1: the well-known segment goes between the host and the resource's path."""
        parts = urlsplit(self.resource)
        path = parts.path.rstrip("/")
        return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{path}"


class MissingSecret(ValueError):
    pass


def oauth_settings(
    entry: OAuthEntry | None, environ: Mapping[str, str] | None = None
) -> OAuthSettings | None:
    """Raises MissingSecret when the introspection client's secret is not in the environment."""
    if entry is None:
        return None
    introspection = None
    if entry.introspection is not None:
        secret = (environ or {}).get(entry.introspection.client_secret_env)
        if not secret:
            raise MissingSecret(
                f"oauth.introspection: the environment variable {entry.introspection.client_secret_env} is not set"
            )
        introspection = IntrospectionSettings(
            entry.introspection.endpoint,
            entry.introspection.client_id,
            secret,
            entry.introspection.cache_seconds,
        )
    return OAuthSettings(
        issuer=entry.issuer,
        resource=entry.resource,
        required_scopes=tuple(entry.required_scopes),
        agent_claim=entry.agent_claim,
        algorithms=tuple(entry.algorithms),
        leeway_seconds=entry.leeway_seconds,
        jwks_uri=entry.jwks_uri,
        jwks_max_age_seconds=entry.jwks_max_age_seconds,
        jwks_min_refresh_seconds=entry.jwks_min_refresh_seconds,
        resource_name=entry.resource_name,
        introspection=introspection,
    )
