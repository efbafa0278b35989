"""What is stored and shown for a released call whose outcome is unknown.

A call ends ``outcome_unknown`` when it was sent to the upstream and no answer came back (the
connection dropped, the upstream process died, the release timed out, or the replica sending it
died). It may have run. Its ``result`` holds only the reason, as one text block; each channel
words the rest for its reader (the agent: `broker.proxy.held_calls.outcome_result`; approvers:
`guidance`), adding the call's idempotency ids so the upstream can be asked about it.
"""

from __future__ import annotations

from typing import Any

from broker.approvals.idempotency import describe_ids
from broker.approvals.model import Approval

HEADLINE = "Outcome unknown — it may have run"


def unknown_result(reason: str) -> dict[str, Any]:
    """The stored `result` of an outcome_unknown approval."""
    return {"content": [{"type": "text", "text": reason}], "isError": True}


def unknown_reason(approval: Approval) -> str:
    """Why nobody knows whether the call ran, as `unknown_result` stored it."""
    content = (approval.result or {}).get("content")
    if isinstance(content, list) and content and isinstance(content[0], dict):
        text = content[0].get("text")
        if isinstance(text, str) and text:
            return text
    return "no answer came back"


def guidance(approval: Approval) -> str:
    """What an approver should do: check the upstream, never expect a retry."""
    ids = describe_ids(approval.arguments)
    which = f" (look for {ids})" if ids else ""
    return f"Check upstream '{approval.server}' for this call before retrying{which}; it was not re-sent."
