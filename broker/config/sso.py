"""``web.sso``: approvers sign in with the company's OpenID Connect identity provider.

```yaml
web:
  sso:
    issuer: https://login.example.com/realms/acme     # discovery: <issuer>/.well-known/openid-configuration
    client_id: mcp-broker-inbox
    client_secret_env: BROKER_SSO_CLIENT_SECRET       # omit for a public client (PKCE alone)
    match: email                                      # or sub: approvers.<name>.oidc_sub
    groups_claim: groups                              # the ID token claim listing the person's groups
    groups: {trading-leads: "Trading Leads"}          # broker group -> identity provider group
    api_audience: mcp-broker-api                      # access tokens with this aud work on /api too
    introspection:                                    # optional: opaque access tokens too, by RFC 7662
      endpoint: https://login.example.com/realms/acme/protocol/openid-connect/token/introspect   # default: discovered
      client_id: mcp-broker-api                       # default: client_id above
      client_secret_env: BROKER_SSO_INTROSPECTION_SECRET  # default: client_secret_env above
      cache_seconds: 30                               # an active answer is reused this long at most
    post_logout_redirect_uri: https://broker.example.com/login   # where the provider sends people after logout
approvers:
  alice: {email: alice@example.com}
```

Nobody is created by signing on: the identity must match an approver of the configuration (by
``oidc_sub`` or by a verified ``email``). The identity provider's groups only count through the
``groups`` map, as Slack user groups do, so the provider cannot name a broker group it was not
given.

Without ``introspection`` the API takes the provider's JWT access tokens only. With it, any
other token that is not a configured approver token is posted to the endpoint (HTTP Basic with
the client's id and secret); the answer must be active, come from ``issuer`` and name
``api_audience`` in ``aud``, so ``introspection`` needs ``api_audience``. Without ``endpoint``
the discovery document's ``introspection_endpoint`` is used; a provider that announces none
refuses every opaque token with that reason (broker.channels.sso.api_tokens), since discovery
happens on first use, not at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker.config.oauth import IntrospectionSettings

# Asymmetric only: an HMAC algorithm would let anyone holding a public key (or the client secret
# of another client) forge a token; `none` is never accepted.
SAFE_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class SsoIntrospectionEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # None: the issuer's discovery document names it (introspection_endpoint).
    endpoint: str | None = Field(default=None, pattern=r"^https?://")
    client_id: str | None = Field(default=None, min_length=1)
    client_secret_env: str | None = Field(default=None, min_length=1)
    # Short: an answer is reused this long after the provider revoked the token.
    cache_seconds: float = Field(default=30.0, ge=0, le=300)


class SsoEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(pattern=r"^https?://")
    client_id: str = Field(min_length=1)
    client_secret_env: str | None = None
    scopes: list[str] = ["openid", "email", "profile"]
    match: Literal["sub", "email"] = "sub"
    groups_claim: str | None = Field(default=None, min_length=1)
    groups: dict[str, str] = {}
    api_audience: str | None = Field(default=None, min_length=1)
    redirect_uri: str | None = Field(default=None, pattern=r"^https?://")
    post_logout_redirect_uri: str | None = Field(default=None, pattern=r"^https?://")
    algorithms: list[str] = ["RS256", "ES256", "PS256"]
    leeway_seconds: int = Field(default=60, ge=0, le=600)
    label: str = Field(default="Sign in with single sign-on", min_length=1, max_length=80)
    introspection: SsoIntrospectionEntry | None = None

    @model_validator(mode="after")
    def _introspection_has_an_audience(self) -> SsoEntry:
        if self.introspection is not None and self.api_audience is None:
            raise ValueError("introspection needs api_audience: the aud an access token must name")
        return self

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one signing algorithm, e.g. RS256")
        if unsafe := sorted(set(value) - SAFE_ALGORITHMS):
            raise ValueError(f"{', '.join(unsafe)} not allowed: use {', '.join(sorted(SAFE_ALGORITHMS))}")
        return value

    @field_validator("scopes")
    @classmethod
    def _openid(cls, value: list[str]) -> list[str]:
        if "openid" not in value:
            raise ValueError("the scopes must include openid")
        return value


@dataclass(frozen=True)
class SsoSettings:
    issuer: str
    client_id: str
    client_secret: str | None = None
    """None: a public client; PKCE alone protects the code."""
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    match: Literal["sub", "email"] = "sub"
    groups_claim: str | None = None
    groups: Mapping[str, str] = field(default_factory=dict)
    """Broker group -> identity provider group: members of the latter count as members of the former."""
    api_audience: str | None = None
    """The ``aud`` of access tokens the decisions API accepts; None: the API takes only approver tokens."""
    redirect_uri: str | None = None
    """None: ``/signin/oidc/callback`` on the host the browser used."""
    post_logout_redirect_uri: str | None = None
    """Where the provider's end_session_endpoint sends the browser after logout (it must be registered
    with the provider); None: ``/login`` on the host the browser used."""
    algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256")
    leeway_seconds: int = 60
    label: str = "Sign in with single sign-on"
    introspection: IntrospectionSettings | None = None
    """Where opaque access tokens are explained (RFC 7662); None: only JWT access tokens."""


class SsoConfigError(ValueError):
    pass


def sso_settings(entry: SsoEntry, environ: Mapping[str, str], path: Path) -> SsoSettings:
    secret = _secret(entry.client_secret_env, "web.sso.client_secret_env", environ, path)
    introspection = None
    if entry.introspection is not None:
        asked = entry.introspection
        introspection_secret = secret
        if asked.client_secret_env is not None:
            introspection_secret = _secret(
                asked.client_secret_env, "web.sso.introspection.client_secret_env", environ, path
            )
        if introspection_secret is None:
            raise SsoConfigError(
                f"{path}: web.sso.introspection: the endpoint needs a client secret "
                "(client_secret_env here or in web.sso)"
            )
        introspection = IntrospectionSettings(
            asked.endpoint, asked.client_id or entry.client_id, introspection_secret, asked.cache_seconds
        )
    return SsoSettings(
        issuer=entry.issuer,
        client_id=entry.client_id,
        client_secret=secret,
        scopes=tuple(entry.scopes),
        match=entry.match,
        groups_claim=entry.groups_claim,
        groups=dict(entry.groups),
        api_audience=entry.api_audience,
        redirect_uri=entry.redirect_uri,
        post_logout_redirect_uri=entry.post_logout_redirect_uri,
        algorithms=tuple(entry.algorithms),
        leeway_seconds=entry.leeway_seconds,
        label=entry.label,
        introspection=introspection,
    )


def _secret(name: str | None, where: str, environ: Mapping[str, str], path: Path) -> str | None:
    if not name:
        return None
    secret = environ.get(name)
    if not secret:
        raise SsoConfigError(f"{path}: {where}: environment variable {name} is not set")
    return secret
