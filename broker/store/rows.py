"""How an `Approval` maps onto a row of the ``approvals`` table and back (escalation and votes
columns by broker.store.escalation_rows and broker.store.vote_rows)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy.engine import RowMapping

from broker.approvals.model import Approval, ApprovalStatus, NewApproval
from broker.store.escalation_rows import escalation_columns, escalation_fields, first_escalation_at
from broker.store.vote_rows import votes_from_json, votes_json


def row_from_approval(approval: Approval) -> dict[str, Any]:
    return {
        "id": approval.id,
        "status": approval.status.value,
        "agent": approval.agent,
        "session_id": approval.session_id,
        "server": approval.server,
        "tool": approval.tool,
        "upstream_tool": approval.upstream_tool,
        "arguments": approval.arguments,
        "arguments_hash": approval.arguments_hash,
        "request_key": approval.request_key,
        "policy_revision": approval.policy_revision,
        "rule": approval.rule,
        "rule_reason": approval.rule_reason,
        "approvers": list(approval.approvers),
        "channels": list(approval.channels),
        "created_at": approval.created_at,
        "expires_at": approval.expires_at,
        "decided_by": approval.decided_by,
        "decided_at": approval.decided_at,
        "decided_via": approval.decided_via,
        "decision_reason": approval.decision_reason,
        "released_at": approval.released_at,
        "released_by": approval.released_by,
        "completed_at": approval.completed_at,
        "result": approval.result,
        "result_delivered_at": approval.result_delivered_at,
        "task_id": approval.task_id,
        "slack_channel": approval.slack_channel,
        "slack_ts": approval.slack_ts,
        "argument_order": list(approval.argument_order),
        "callers": approval.callers,
        "pending_told_at": approval.pending_told_at,
        "quorum": approval.quorum,
        "quorum_from": list(approval.quorum_from),
        "votes": votes_json(approval.votes),
        **escalation_columns(approval),
        "editable": list(approval.editable),
        "original_arguments": approval.original_arguments,
        "edited_by": approval.edited_by,
        "edited_at": approval.edited_at,
        "claims": approval.claims,
        "version": approval.version,
    }


def approval_from_row(row: RowMapping) -> Approval:
    return Approval(
        id=row["id"],
        status=ApprovalStatus(row["status"]),
        agent=row["agent"],
        session_id=row["session_id"],
        server=row["server"],
        tool=row["tool"],
        upstream_tool=row["upstream_tool"],
        arguments=row["arguments"],
        arguments_hash=row["arguments_hash"],
        request_key=row["request_key"],
        policy_revision=row["policy_revision"],
        rule=row["rule"],
        rule_reason=row["rule_reason"],
        approvers=tuple(row["approvers"]),
        channels=tuple(row["channels"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        version=row["version"],
        decided_by=row["decided_by"],
        decided_at=row["decided_at"],
        decided_via=row["decided_via"],
        decision_reason=row["decision_reason"],
        released_at=row["released_at"],
        released_by=row["released_by"],
        completed_at=row["completed_at"],
        result=row["result"],
        result_delivered_at=row["result_delivered_at"],
        task_id=row["task_id"],
        slack_channel=row["slack_channel"],
        slack_ts=row["slack_ts"],
        argument_order=tuple(row["argument_order"]),
        callers=row["callers"],
        pending_told_at=row["pending_told_at"],
        quorum=row["quorum"],
        quorum_from=tuple(row["quorum_from"]),
        votes=votes_from_json(row["votes"]),
        **escalation_fields(row),
        editable=tuple(row["editable"]),
        original_arguments=row["original_arguments"],
        edited_by=row["edited_by"],
        edited_at=row["edited_at"],
        claims=row["claims"],
    )


def approval_from_new(
    new: NewApproval,
    approval_id: str,
    now: datetime,
    *,
    status: ApprovalStatus = ApprovalStatus.PENDING,
    decided: Mapping[str, Any],
) -> Approval:
    """The approval `new` becomes when created at `now`: pending, or already decided (with the
    decision's fields in `decided`; nothing is left to escalate then)."""
    pending = status is ApprovalStatus.PENDING
    approval = Approval(
        id=approval_id,
        status=status,
        agent=new.agent,
        session_id=new.session_id,
        server=new.server,
        tool=new.tool,
        upstream_tool=new.upstream_tool,
        arguments=dict(new.arguments),
        arguments_hash=new.arguments_hash,
        request_key=new.request_key,
        policy_revision=new.policy_revision,
        rule=new.rule,
        rule_reason=new.rule_reason,
        approvers=new.approvers,
        channels=new.channels,
        created_at=now,
        expires_at=now + new.timeout,
        version=1,
        task_id=new.task_id,
        argument_order=new.argument_order,
        quorum=new.quorum,
        quorum_from=new.quorum_from,
        escalation=new.escalation,
        next_escalation_at=first_escalation_at(now, new.escalation) if pending else None,
        editable=new.editable,
        claims=None if new.claims is None else dict(new.claims),
    )
    return replace(approval, **decided) if decided else approval
