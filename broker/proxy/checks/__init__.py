"""Checks a tools/call passes on its way through the gateway, each in a module of its own.

A `CallCheck` looks at one `PendingCall` (a call the policy allows or holds) and returns the result
that ends it (a refusal) or None to let it go on. The gateway runs, in order:

1. the `CallCheck`s every allowed or held call passes (`rate_limit.RateLimitCheck`);
2. for a held call, the grant check (`grants.GrantCheck`): a grant lets it through, else it is held;
3. for a call that goes through now (allowed, or under a grant), the spend check
   (`spend.SpendCheck`), whose reservation the forward then commits or releases. A held call
   reserves its spend when it is released (broker/proxy/releaser.py), not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from broker.policy.decision import Decision
from broker.proxy.upstream.pool import UpstreamTool

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class PendingCall:
    agent: str
    session: str
    """The key rate limits are counted under (see `broker.proxy.agent.AgentContext`)."""
    tool: UpstreamTool
    arguments: dict[str, Any]
    decision: Decision


class CallCheck(Protocol):
    async def check(self, call: PendingCall) -> JsonObject | None:
        """The result that ends `call` here (it is refused), or None to let it go on."""
        ...
