"""Who is asking: the agent's side of a request the gateway serves (how to reach it, and whether it
withdrew the request, is `broker.proxy.agent_request`).

The endpoints build these (HTTP per request, stdio per line); the gateway and the approval
service read them. They carry no protocol framing, so neither side depends on the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Claims = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AgentContext:
    agent: str
    session: str
    """The key rate limits are counted under: the MCP session, or the agent itself on the stateless era."""
    modern: bool = False
    claims: Claims | None = None
    """The verified access token's claims (None for API keys): `claims.` paths in `when` read them."""
    subject_token: str | None = field(default=None, repr=False)
    """The verified access token itself (None for API keys): only token exchange reads it."""
