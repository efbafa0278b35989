"""What an agent is told about a call whose arguments a human changed before approving.

A model that asked for 500 and got a result for 100 must know, or it will report the wrong order
to its user. So every answer about an edited approval says it in words, before the upstream's
content (the model reads the first text first), and in ``_meta`` for programs:

    A human (alice) changed the arguments before approving: quantity 500 -> 100. The upstream ran
    the call with the changed arguments.

``_meta`` (under the approval key) gains ``edited``: ``by``, ``originalArguments`` (what the agent
sent), ``arguments`` (what ran) and ``changes`` (``[{"field", "from", "to"}]``).
"""

from __future__ import annotations

from typing import Any

from broker.approvals.edits import changes_text, recorded_changes
from broker.approvals.model import Approval, ApprovalStatus


def edit_notice(approval: Approval) -> str | None:
    """The sentence for the agent, by status; None when nobody changed the arguments."""
    if not approval.is_edited:
        return None
    changed = f"A human ({approval.edited_by}) changed the arguments"
    changes = changes_text(recorded_changes(approval))
    status = approval.status
    if status is ApprovalStatus.PENDING:
        return (
            f"{changed}: {changes}. If the call is approved, it runs with the changed arguments, "
            "not the ones you sent."
        )
    if status is ApprovalStatus.COMPLETED:
        return (
            f"{changed} before approving: {changes}. The upstream ran the call with the changed "
            "arguments; the result below is for those."
        )
    if status in (ApprovalStatus.APPROVED, ApprovalStatus.RELEASED, ApprovalStatus.OUTCOME_UNKNOWN):
        return f"{changed} before approving: {changes}. The call was sent with the changed arguments."
    if status is ApprovalStatus.FAILED:
        return f"{changed} before approving: {changes}. The call with the changed arguments did not complete."
    return f"{changed} ({changes}), but the changed call was not run."


def edit_meta(approval: Approval) -> dict[str, Any] | None:
    if approval.original_arguments is None:
        return None
    return {
        "by": approval.edited_by,
        "originalArguments": approval.original_arguments,
        "arguments": approval.arguments,
        "changes": [change.as_json() for change in recorded_changes(approval)],
    }


def with_notice(result: dict[str, Any], approval: Approval) -> dict[str, Any]:
    """`result` (a CallToolResult) with the edit notice as its first content item."""
    notice = edit_notice(approval)
    if notice is None:
        return result
    content = result.get("content")
    items = list(content) if isinstance(content, list) else []
    return {**result, "content": [{"type": "text", "text": notice}, *items]}
