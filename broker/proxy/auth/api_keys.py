"""Static API keys as an `AgentVerifier` (the digest lookup and its cache live in proxy/identity.py)."""

from __future__ import annotations

from broker.proxy.auth.model import AgentIdentity, Challenge
from broker.proxy.identity import ANONYMOUS_AGENT, Authenticator


class ApiKeyVerifier:
    def __init__(self, authenticator: Authenticator, refusal: Challenge) -> None:
        self._auth = authenticator
        self._refusal = refusal
        # One identity per agent, built once: the hot path allocates nothing.
        self._identities: dict[str, AgentIdentity] = {}

    def identify(self, authorization: bytes | None) -> AgentIdentity | None:
        agent = self._auth.agent_for_header(authorization)
        if agent is None:
            return None
        identity = self._identities.get(agent)
        if identity is None:
            if agent == ANONYMOUS_AGENT and not authorization:
                return AgentIdentity(agent, "anonymous")
            identity = AgentIdentity(agent, "api_key")
            self._identities[agent] = identity
        return identity

    async def verify(self, authorization: bytes | None) -> AgentIdentity | Challenge:
        return self.identify(authorization) or self._refusal
