"""Reading an upstream's ``auth`` and ``agent_headers`` keys (the transport-independent part of spec.py).

The agent's own ``Authorization`` header is never forwarded: upstream credentials come only
from here and from the server's static ``headers``. Configuring both ``auth`` and a static or
templated ``Authorization`` header is an error, since one would silently replace the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from broker.proxy.upstream.credentials.client_credentials import ClientCredentialsSettings
from broker.proxy.upstream.credentials.headers import AgentHeaderTemplates, TemplateError

Expand = Callable[[str, str], str]
"""Expands ``${VAR}`` in a value; the first argument is the key, for its error message."""

_AUTH_TYPES = ("client_credentials", "token_exchange")
_AUTH_KEYS = frozenset(
    {"type", "issuer", "token_url", "client_id", "client_secret", "scope", "resource", "audience"}
)


class CredentialsConfigError(ValueError):
    """The credentials settings cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class UpstreamAuth:
    agent_headers: Mapping[str, str] = field(default_factory=dict)
    client_credentials: ClientCredentialsSettings | None = None
    token_exchange: bool = False
    """Calls for an agent carry a token exchanged for the agent's own (RFC 8693)."""


def upstream_auth(
    entry: Mapping[str, Any], *, headers: Mapping[str, str], agent_headers: Mapping[str, str], expand: Expand
) -> UpstreamAuth | None:
    """None when the upstream needs nothing beyond its static headers."""
    try:
        AgentHeaderTemplates(agent_headers)
    except TemplateError as exc:
        raise CredentialsConfigError(str(exc)) from None
    auth = entry.get("auth")
    grant = _client_credentials(auth, expand)
    if grant is not None:
        clashing = [name for name in (*headers, *agent_headers) if name.lower() == "authorization"]
        if clashing:
            raise CredentialsConfigError("'auth' sets the Authorization header; remove it from the headers")
    if grant is None and not agent_headers:
        return None
    exchange = isinstance(auth, Mapping) and auth.get("type") == "token_exchange"
    return UpstreamAuth(agent_headers=dict(agent_headers), client_credentials=grant, token_exchange=exchange)


def _client_credentials(auth: object, expand: Expand) -> ClientCredentialsSettings | None:
    if auth is None:
        return None
    if not isinstance(auth, Mapping):
        raise CredentialsConfigError("'auth' must be an object")
    unknown = sorted(set(auth) - _AUTH_KEYS)
    if unknown:
        raise CredentialsConfigError(f"'auth.{unknown[0]}' is not a known setting")
    values: dict[str, str] = {}
    for key, value in auth.items():
        if not isinstance(value, str):
            raise CredentialsConfigError(f"'auth.{key}' must be a string")
        values[key] = expand(f"auth.{key}", value)
    if values.get("type") not in _AUTH_TYPES:
        raise CredentialsConfigError(f"'auth.type' must be one of {', '.join(_AUTH_TYPES)}")
    for key in ("client_id", "client_secret"):
        if not values.get(key):
            raise CredentialsConfigError(f"'auth.{key}' is required")
    if not values.get("token_url") and not values.get("issuer"):
        raise CredentialsConfigError("'auth' needs a 'token_url' or an 'issuer' to discover it from")
    for key in ("token_url", "issuer"):
        if key in values and urlsplit(values[key]).scheme not in ("https", "http"):
            raise CredentialsConfigError(f"'auth.{key}' must be an http(s) URL")
    return ClientCredentialsSettings(
        client_id=values["client_id"],
        client_secret=values["client_secret"],
        token_url=values.get("token_url"),
        issuer=values.get("issuer"),
        scope=values.get("scope"),
        resource=values.get("resource"),
        audience=values.get("audience"),
    )
