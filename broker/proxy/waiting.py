"""How long a held call's request stays open before the agent gets the "pending approval" answer.

An agent's MCP client gives up on a request after its own timeout (the OpenAI Agents SDK after
5 s, the TypeScript and Python SDKs after 60 s unless progress resets it), and a client that gave
up never sees the answer. So the broker answers before that, with the approval id and how to come
back, and the call stays held for the humans. The rules:

* A request without a progress token is held for the **hold budget**: the smaller of the rule's
  ``hold_budget`` and the agent's ``hold_budget`` where either is set, else the broker's
  ``approvals.hold_budget`` (4 s, under the shortest common client timeout).
* A request with a progress token is held until the approval's deadline, with
  ``notifications/progress`` every few seconds, because clients that send a token usually reset
  their timeout on progress; an agent configured ``progress_resets_timeout: false`` (a client
  that sends a token but does not reset on it) gets the hold budget instead.
* ``check_approval`` waits for the hold budget, as a request without a token does.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.policy.decision import ApprovalRequirement

DEFAULT_HOLD_BUDGET = 4.0
"""Seconds; under the OpenAI Agents SDK's 5 s default, the shortest of the common clients."""

DEFAULT_END_GRACE = 2.0
"""Seconds an agent's session end (DELETE) waits for a cancellation it overtook before it withdraws
the requests in flight (see `broker.proxy.agent_request`)."""


@dataclass(frozen=True, slots=True)
class ClientWaits:
    """How one agent's MCP client waits for an answer (``agents.<name>`` in the configuration)."""

    hold_budget: float | None = None
    """Seconds before the pending answer; set it under the client's request timeout."""
    progress_resets_timeout: bool = True
    """Whether the client restarts its timeout on each progress notification."""


NO_PREFERENCE = ClientWaits()


def budget_for(default: float, client: ClientWaits, requirement: ApprovalRequirement | None) -> float:
    """The hold budget of a request without a progress token (see the module docstring)."""
    chosen = [
        budget
        for budget in (client.hold_budget, requirement.hold_budget_seconds if requirement else None)
        if budget is not None
    ]
    return min(chosen) if chosen else default


def holds_until_deadline(client: ClientWaits, *, has_progress_token: bool) -> bool:
    """Whether the request may stay open until the approval's deadline, kept alive by progress."""
    return has_progress_token and client.progress_resets_timeout


def only_timed_out(reason: object) -> bool:
    """Whether a ``notifications/cancelled`` says the client merely stopped waiting (its own request
    timeout; the TypeScript SDK sends "McpError: MCP error -32001: Request timed out"): that is
    not the agent withdrawing the call, which stays held for the humans and can be asked for again."""
    if not isinstance(reason, str):
        return False
    text = reason.lower()
    return "timed out" in text or "timeout" in text or "-32001" in text
