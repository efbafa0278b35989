"""Who is asking and how to reach them: the agent's side of a request the gateway serves.

The endpoints build these (HTTP per request, stdio per line); the gateway and the approval
service read them. They carry no protocol framing, so neither side depends on the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.proxy.upstream.base import JsonObject

Notify = Callable[[str, JsonObject], Awaitable[None]]
"""Sends a notification on the stream of the request being served (a no-op when it has none)."""


class AgentRequest:
    """The agent's side of one request in flight."""

    __slots__ = ("notify", "withdrawn")

    def __init__(self, notify: Notify) -> None:
        self.notify = notify
        self.withdrawn = False
        """Set by the endpoint before it cancels the request because the agent withdrew it
        (``notifications/cancelled``, ending its session, or closing the stream where the protocol
        makes that a cancellation), as opposed to a lost connection or a broker shutdown."""


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
