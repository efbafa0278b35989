"""What a verifier answers: the caller's `AgentIdentity`, or the `Challenge` the endpoint relays.

    AgentVerifier.verify(authorization header bytes | None)
        -> AgentIdentity(agent, method, scopes, claims)   the call goes on as `agent`
        -> Challenge(status 401 | 403, www_authenticate, message)   refused, nothing forwarded

A verifier never raises for bad input: a malformed, expired or unverifiable token, and a key
source that cannot be reached, are all a 401 challenge (fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Method = Literal["api_key", "jwt", "introspection", "anonymous"]


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    agent: str
    """The name the policy, rate limits and approvals see."""
    method: Method
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)
    """The verified token's claims (empty for API keys)."""


@dataclass(frozen=True, slots=True)
class Challenge:
    status: int
    www_authenticate: bytes
    message: str
    """For the JSON-RPC error body; never contains the presented token."""


class AgentVerifier(Protocol):
    async def verify(self, authorization: bytes | None) -> AgentIdentity | Challenge: ...


def bearer_challenge(
    status: int,
    message: str,
    *,
    error: str | None = None,
    description: str | None = None,
    resource_metadata: str | None = None,
    scope: str | None = None,
    realm: str | None = None,
) -> Challenge:
    """RFC 6750 section 3 with RFC 9728's `resource_metadata`; `error` is left out when no token came."""
    params: list[str] = []
    for name, value in (
        ("realm", realm),
        ("error", error),
        ("error_description", description),
        ("resource_metadata", resource_metadata),
        ("scope", scope),
    ):
        if value is not None:
            # Quoted strings may not hold `"` or `\` unescaped (RFC 9110 section 5.6.4).
            params.append(f'{name}="{value.replace(chr(92), "").replace(chr(34), chr(39))}"')
    header = "Bearer " + ", ".join(params) if params else "Bearer"
    return Challenge(status, header.encode("latin-1", "replace"), message)


def bearer_token(headers: Mapping[bytes, bytes]) -> str | None:
    """The token of a request's ``Authorization: Bearer`` header, once a verifier has accepted it
    (kept only for RFC 8693 token exchange with an upstream; never forwarded as is)."""
    scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
    token = token.strip()
    return token.decode("latin-1") if scheme.lower() == b"bearer" and token else None
