"""Static API keys as an `AgentVerifier`: `Authorization: Bearer <key>` names the agent whose key it is.

Only SHA-256 digests of the keys are kept (in memory and in the configuration), so a leaked
config or core dump leaks no key. A header that matched once is remembered with its identity, so
the next call with it is one dict lookup and no hashing; only headers that matched are kept (a
few per agent), so an unauthenticated caller cannot grow the memory. No header at all is the
anonymous agent when `allow_anonymous` is set, and refused otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from broker.proxy.auth.model import AgentIdentity, Challenge

ANONYMOUS_AGENT = "anonymous"


@dataclass(frozen=True, slots=True)
class AgentCredential:
    agent: str
    key_sha256: str
    """Only the digest is kept in memory and config, so a leaked config or core dump leaks no key."""


class ApiKeyVerifier:
    def __init__(
        self, credentials: Mapping[str, AgentCredential], refusal: Challenge, *, allow_anonymous: bool = False
    ) -> None:
        self._by_digest = {credential.key_sha256: credential.agent for credential in credentials.values()}
        self._refusal = refusal
        self._anonymous = AgentIdentity(ANONYMOUS_AGENT, "anonymous") if allow_anonymous else None
        # One identity per agent, built once: the hot path allocates nothing.
        self._identities: dict[str, AgentIdentity] = {}
        self._proven: dict[bytes, AgentIdentity] = {}
        self._proven_limit = 4 * len(self._by_digest) + 16

    def identify(self, authorization: bytes | None) -> AgentIdentity | None:
        """The agent an Authorization header names, or None when it must be refused."""
        if not authorization:
            return self._anonymous
        proven = self._proven.get(authorization)
        if proven is not None:
            return proven
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return None
        # Looking up the SHA-256 of the presented key, never the key itself, leaves timing
        # nothing to learn: an attacker cannot steer which digest prefix a guess produces.
        agent = self._by_digest.get(hashlib.sha256(token.decode("latin-1").encode()).hexdigest())
        if agent is None:
            return None
        identity = self._identities.get(agent)
        if identity is None:
            identity = self._identities[agent] = AgentIdentity(agent, "api_key")
        if len(self._proven) < self._proven_limit:
            self._proven[authorization] = identity
        return identity

    async def verify(self, authorization: bytes | None) -> AgentIdentity | Challenge:
        return self.identify(authorization) or self._refusal
