"""What the gateway answers an agent's ``tools/call`` with when it does not forward it, or when the
upstream failed: tool results with ``isError: true`` (and the decision in ``_meta`` under
`DECISION_META_KEY`), never JSON-RPC errors, so the model reads why.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.policy.decision import Decision
from broker.proxy.ratelimit import RateVerdict
from broker.proxy.upstream.base import JsonObject
from broker.proxy.upstream.pool import ServerStatus

DECISION_META_KEY = "io.github.mcp-approval-broker/decision"


def decision_meta(decision: Decision, decision_id: str) -> JsonObject:
    return {
        DECISION_META_KEY: {
            "decisionId": decision_id,
            "action": decision.action.value,
            "rule": decision.rule,
            "reason": decision.reason,
            "policyRevision": decision.revision,
        }
    }


def error_result(text: str, decision: Decision, decision_id: str) -> JsonObject:
    return {
        "content": [{"type": "text", "text": text}],
        "isError": True,
        "_meta": decision_meta(decision, decision_id),
    }


def denied_result(name: str, decision: Decision, decision_id: str) -> JsonObject:
    return error_result(
        f"Policy violation: the call to '{name}' was denied by policy rule {decision.rule} "
        f"(policy revision {decision.revision}): {decision.reason}. "
        "The tool exists, but this policy does not allow the call; retrying will not help.",
        decision,
        decision_id,
    )


def hidden_result(name: str, decision: Decision, decision_id: str) -> JsonObject:
    # Unlike a denial, this must not confirm that such a tool exists.
    return error_result(
        f"Policy violation: '{name}' may not be called under this policy (policy rule {decision.rule}, "
        f"policy revision {decision.revision}): {decision.reason}. Retrying will not help.",
        decision,
        decision_id,
    )


def unknown_tool_message(name: str, servers: Sequence[ServerStatus]) -> str:
    down = [f"'{server.name}'" for server in servers if server.state != "connected"]
    if not down:
        return f"Unknown tool: {name}"
    return (
        f"Unknown tool: {name}. Upstream server(s) not connected right now: {', '.join(down)}; their tools "
        "are unknown until they connect, so if the tool belongs to one of them, retry shortly."
    )


def rate_limited_result(name: str, decision: Decision, decision_id: str, verdict: RateVerdict) -> JsonObject:
    limit = decision.rate_limit
    assert limit is not None
    if verdict.unavailable is not None:
        text = (
            f"Not forwarded: '{name}' is rate limited (policy rule {decision.rule}) and the broker cannot "
            f"count calls right now: {verdict.unavailable}. It refuses such calls until it can (fails "
            f"closed). Retry after {verdict.retry_after:g} s."
        )
    else:
        text = (
            f"Rate limit exceeded: '{name}' allows {limit.max_calls} calls per {limit.window_seconds:g} s "
            f"in one session (policy rule {decision.rule}). Retry after {verdict.retry_after:g} s."
        )
    result = error_result(text, decision, decision_id)
    result["_meta"][DECISION_META_KEY]["retryAfterSeconds"] = verdict.retry_after
    return result


def store_down_result() -> JsonObject:
    return upstream_failure_result(
        "The broker cannot reach its approval store, so it forwards no calls until the store is back "
        "(it fails closed). Retry later."
    )


def upstream_failure_result(text: str) -> JsonObject:
    return {"content": [{"type": "text", "text": text}], "isError": True}
