"""Opaque access tokens for `/mcp`, explained by RFC 7662 introspection (broker.net.introspection).

The answer must name the broker's resource in `aud` when it has one; the agent name and scopes
come from the answer as from a JWT's claims (see jwt.py). An answer that names no agent is
refused and not remembered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from broker.config.oauth import IntrospectionSettings, OAuthSettings
from broker.net.introspection import Introspection, IntrospectionRefused
from broker.proxy.auth.jwt import TokenRefused, agent_of, scopes_of
from broker.proxy.auth.model import AgentIdentity


class Introspector:
    def __init__(
        self,
        settings: OAuthSettings,
        endpoint: IntrospectionSettings,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = 4096,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._agent_claim = settings.agent_claim
        self._introspection = Introspection(
            endpoint,
            self._identity,
            issuer=settings.issuer,
            audience=settings.resource,
            leeway=settings.leeway_seconds,
            clock=clock,
            cache_size=cache_size,
            transport=transport,
        )

    @property
    def requests(self) -> int:
        return self._introspection.requests

    async def identify(self, token: bytes) -> AgentIdentity:
        """The agent an active token names; raises TokenRefused otherwise."""
        try:
            return await self._introspection.explained(token)
        except IntrospectionRefused as refused:
            raise TokenRefused(str(refused)) from refused

    def _identity(self, answer: Mapping[str, Any]) -> AgentIdentity:
        agent = agent_of(answer, self._agent_claim)
        if agent is None:
            raise IntrospectionRefused(f"introspection names no {self._agent_claim!r} for the agent")
        return AgentIdentity(agent, "introspection", scopes_of(answer), dict(answer))
