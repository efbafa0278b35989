"""What an agent is told about a held call: the pending answer, progress and task status texts,
and the outcome of a finished approval. Pure: these turn an approval into words and results.

The words are written for a model as much as for a person: what happened, whether the call ran,
and what to do next (see the README's "Held calls" and issue notes for what each client shows).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from broker.approvals import Approval, ApprovalStatus
from broker.approvals.escalation import escalation_text
from broker.approvals.idempotency import describe_ids
from broker.approvals.outcomes import unknown_reason
from broker.approvals.quorum import progress_text
from broker.approvals.service import POLICY_ACTOR
from broker.proxy.edited_result import edit_meta, edit_notice, with_notice
from broker.proxy.upstream.base import JsonObject

APPROVAL_META_KEY = "io.github.mcp-approval-broker/approval"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def waiting_message(approval: Approval, now: datetime) -> str:
    if approval.status is ApprovalStatus.PENDING:
        left = math.ceil(approval.time_left(now).total_seconds())
        votes = progress_text(approval, brackets=True)
        so_far = f"; {votes}" if votes else ""
        if (escalated := escalation_text(approval)) is not None:
            so_far += f"; {escalated}"
        return (
            f"Waiting for human approval of '{approval.tool}' (approval {approval.id}){so_far}; "
            f"auto-deny in {left} s"
        )
    return f"Approved by {approval.decided_by}; forwarding '{approval.tool}' to the upstream"


def pending_result(approval: Approval, *, now: datetime, check: str, cancel: str) -> JsonObject:
    """The answer a model reads while a human decides: plain words first, the same facts in
    `structuredContent` for clients that pass only that on, and `isError` so that no client
    mistakes it for the tool's result (nor validates it against the tool's output schema)."""
    if approval.status is ApprovalStatus.PENDING:
        left = math.ceil(approval.time_left(now).total_seconds())
        state = (
            f"PENDING HUMAN APPROVAL: the call to '{approval.tool}' has NOT been executed yet. It is "
            f"waiting for a human to approve or deny it (approval id {approval.id}; it expires at "
            f"{iso(approval.expires_at)}, in {left} s, and is rejected then if nobody decides)."
        )
        votes = progress_text(approval)
        if votes:
            state += f" It needs {approval.quorum} distinct approvers; so far {votes}."
        if (escalated := escalation_text(approval)) is not None:
            state += f" Nobody decided in time, so it was {escalated}."
        state += f" {edit_notice(approval)}" if approval.is_edited else ""
    else:
        state = (
            f"APPROVED, RUNNING: {approval.decided_by} approved the call to '{approval.tool}' and the "
            f"broker is executing it now (approval id {approval.id}); the result is not in yet."
        )
    steps = (
        f"What to do: get the outcome by calling {check} with approval_id '{approval.id}', or by "
        "repeating exactly the same call with exactly the same arguments; either returns the real "
        "result once it is decided, and the call runs at most once. Do NOT retry with changed "
        "arguments or another tool to get around the approval: that is a new request and needs its "
        f"own approval. To withdraw it, call {cancel} with approval_id '{approval.id}'. Meanwhile you "
        "may tell the user that a human approval is pending."
    )
    return {
        "content": [{"type": "text", "text": f"{state}\n{steps}"}],
        "structuredContent": {
            "status": "pending_approval" if approval.status is ApprovalStatus.PENDING else "approved_running",
            "executed": False,
            "approval_id": approval.id,
            "tool": approval.tool,
            "expires_at": iso(approval.expires_at),
            "next_step": f"call {check} with approval_id '{approval.id}' or repeat the identical call",
            "do_not": "retry with changed arguments to get around the approval",
            "cancel": f"call {cancel} with approval_id '{approval.id}'",
        },
        "isError": True,
        "_meta": {APPROVAL_META_KEY: summary(approval)},
    }


def no_such_approval(approval_id: str) -> JsonObject:
    text = f"No approval with id '{approval_id}' exists for this agent."
    return {"content": [{"type": "text", "text": text}], "isError": True}


def tell_shared(result: JsonObject, approval: Approval) -> None:
    """A caller from another session attached to this approval: its result is that one execution."""
    note = (
        f"Note: this identical call was attached to approval {approval.id}, first requested at "
        f"{iso(approval.created_at)} in another session; this outcome answers all "
        f"{approval.callers} identical requests, and the upstream received the call at most once."
    )
    content = result.get("content")
    result["content"] = [{"type": "text", "text": note}, *(content if isinstance(content, list) else [])]
    shown = result.setdefault("_meta", {}).setdefault(APPROVAL_META_KEY, {})
    if isinstance(shown, dict):
        shown["shared"] = True


def store_down_result(tool: str, detail: str) -> JsonObject:
    text = f"The call to '{tool}' needs human approval, but the broker's approval store is unreachable ({detail}). It was not forwarded."
    return {"content": [{"type": "text", "text": text}], "isError": True}


def summary(approval: Approval) -> JsonObject:
    summary: JsonObject = {
        "approvalId": approval.id,
        "status": approval.status.value,
        "expiresAt": iso(approval.expires_at),
        "decidedBy": approval.decided_by,
        "decidedVia": approval.decided_via,
    }
    edited = edit_meta(approval)
    if edited is not None:
        summary["edited"] = edited
    return summary


def status_text(approval: Approval) -> str:
    notice = edit_notice(approval)
    text = _status_text(approval)
    return text if notice is None else f"{text}. {notice}"


def _status_text(approval: Approval) -> str:
    status = approval.status
    if status is ApprovalStatus.PENDING:
        votes = progress_text(approval, brackets=True)
        so_far = f": {votes}" if votes else ""
        if (escalated := escalation_text(approval)) is not None:
            so_far += f" ({escalated})"
        return f"waiting for human approval{so_far} until {iso(approval.expires_at)}"
    if status is ApprovalStatus.APPROVED or status is ApprovalStatus.RELEASED:
        return f"approved by {approval.decided_by}; forwarding to the upstream"
    if status is ApprovalStatus.COMPLETED:
        return f"approved by {approval.decided_by} and completed"
    if status is ApprovalStatus.FAILED:
        return "approved, but the call could not be completed (it was not run)"
    if status is ApprovalStatus.OUTCOME_UNKNOWN:
        return (
            f"outcome unknown: the approved call was sent to upstream '{approval.server}' and no answer came "
            "back; it may have run, and it was not retried"
        )
    if status is ApprovalStatus.DENIED:
        # SDKs that report only a task's status still tell the model who said no and why
        via = f" via {approval.decided_via}" if approval.decided_via else ""
        reason = f": {approval.decision_reason}" if approval.decision_reason else ""
        return f"denied by {approval.decided_by}{via}{reason}"
    if status is ApprovalStatus.EXPIRED:
        return (
            f"expired: nobody decided before the deadline ({iso(approval.expires_at)}), so the call "
            "was automatically rejected; it was not denied by a human and was not executed"
        )
    if approval.decided_via != POLICY_ACTOR or not approval.decision_reason:
        return "cancelled by the agent"
    return f"cancelled: {approval.decision_reason}"


def outcome_result(approval: Approval) -> JsonObject:
    """What the agent receives for a finished approval."""
    status = approval.status
    meta = {APPROVAL_META_KEY: summary(approval)}
    if status in (ApprovalStatus.COMPLETED, ApprovalStatus.FAILED) and approval.result is not None:
        result = with_notice(dict(approval.result), approval)
        result["_meta"] = {**(result.get("_meta") or {}), **meta}
        return result
    when = iso(approval.decided_at) if approval.decided_at else "?"
    if status is ApprovalStatus.DENIED:
        reason = f": {approval.decision_reason}" if approval.decision_reason else ""
        text = (
            f"Denied by a human: {approval.decided_by} denied the call to '{approval.tool}' "
            f"via {approval.decided_via} at {when}{reason}. Do not retry this call."
        )
    elif status is ApprovalStatus.EXPIRED:
        text = (
            f"Expired: nobody approved the call to '{approval.tool}' before its deadline "
            f"({iso(approval.expires_at)}), so it was automatically rejected. It was not denied by a human; "
            "it was not executed."
        )
    elif status is ApprovalStatus.OUTCOME_UNKNOWN:
        ids = describe_ids(approval.arguments)
        text = (
            f"Outcome unknown: the approved call to '{approval.tool}' was sent to upstream '{approval.server}' "
            f"but no answer came back ({unknown_reason(approval)}); it may have run. It was not retried. "
            "Check on the upstream before doing it again" + (f" (the call carried {ids})." if ids else ".")
        )
    else:
        text = f"Cancelled: the call to '{approval.tool}' was withdrawn before anybody decided; it was not executed."
    return with_notice(
        {"content": [{"type": "text", "text": text}], "isError": True, "_meta": meta}, approval
    )
