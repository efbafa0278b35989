"""Who is calling: API keys presented as `Authorization: Bearer ...`, mapped to agent names."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

ANONYMOUS_AGENT = "anonymous"


@dataclass(frozen=True, slots=True)
class AgentCredential:
    agent: str
    key_sha256: str
    """Only the digest is kept in memory and config, so a leaked config or core dump leaks no key."""


class Authenticator:
    def __init__(self, credentials: Mapping[str, AgentCredential], *, allow_anonymous: bool = False) -> None:
        self._by_digest = {credential.key_sha256: credential.agent for credential in credentials.values()}
        # Keys already proven, so the hot path skips hashing. Only keys that matched are kept:
        # as many as there are agents, and nothing an unauthenticated caller can grow.
        self._proven: dict[bytes, str] = {}
        self.allow_anonymous = allow_anonymous

    def agent_for_header(self, authorization: bytes | None) -> str | None:
        """The agent name for an Authorization header value, or None when it must be rejected."""
        if not authorization:
            return ANONYMOUS_AGENT if self.allow_anonymous else None
        proven = self._proven.get(authorization)
        if proven is not None:
            return proven
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return None
        agent = self.agent_for_key(token.strip().decode("latin-1"))
        if agent is not None and len(self._proven) < 4 * len(self._by_digest) + 16:
            self._proven[authorization] = agent
        return agent

    def agent_for_key(self, key: str) -> str | None:
        # Looking up the SHA-256 of the presented key, never the key itself, leaves timing
        # nothing to learn: an attacker cannot steer which digest prefix a guess produces.
        return self._by_digest.get(hashlib.sha256(key.encode()).hexdigest())
