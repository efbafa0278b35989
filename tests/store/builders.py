"""Building blocks for store tests: a valid NewApproval, audit events, and walking the state machine."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.model import NewApproval as _NewApproval
from broker.approvals.ports import ApprovalStore

S = ApprovalStatus

PATH_TO: dict[ApprovalStatus, tuple[ApprovalStatus, ...]] = {
    S.PENDING: (),
    S.APPROVED: (S.APPROVED,),
    S.RELEASED: (S.APPROVED, S.RELEASED),
    S.COMPLETED: (S.APPROVED, S.RELEASED, S.COMPLETED),
    S.FAILED: (S.APPROVED, S.RELEASED, S.FAILED),
    S.OUTCOME_UNKNOWN: (S.APPROVED, S.RELEASED, S.OUTCOME_UNKNOWN),
    S.DENIED: (S.DENIED,),
    S.EXPIRED: (S.EXPIRED,),
    S.CANCELLED: (S.CANCELLED,),
}


def new_approval(**overrides: Any) -> _NewApproval:
    fields: dict[str, Any] = {
        "agent": "agent-1",
        "server": "payments",
        "tool": "payments__refund",
        "upstream_tool": "refund",
        "arguments": {"order": "A-17", "amount": 120},
        "policy_revision": "rev-1",
        "rule": "rules[0] 'payments__*'",
        "rule_reason": "money moves",
        "timeout": timedelta(minutes=5),
        "session_id": "session-1",
        "approvers": ("alice", "bob"),
        "channels": ("slack", "web"),
    }
    fields.update(overrides)
    return _NewApproval(**fields)


def requested(actor: str = "agent-1") -> AuditEvent:
    return AuditEvent(AuditEventKind.REQUESTED, actor)


def entering(status: ApprovalStatus, actor: str = "alice", **details: Any) -> AuditEvent:
    return AuditEvent(AuditEventKind.for_status(status), actor, details)


async def create(store: ApprovalStore, **overrides: Any) -> Approval:
    return await store.create(new_approval(**overrides), audit=requested())


async def walk_to(store: ApprovalStore, approval: Approval, target: ApprovalStatus) -> Approval:
    """Move a pending approval along the shortest allowed path to `target`."""
    current = approval
    for step in PATH_TO[target]:
        current = await store.transition(current.id, expected={current.status}, to=step, audit=entering(step))
    return current


def as_stored(
    new: _NewApproval,
    *,
    approval_id: str,
    created_at: datetime,
    status: ApprovalStatus = ApprovalStatus.PENDING,
    version: int = 1,
    **fields: Any,
) -> Approval:
    """The Approval a store would hand back for `new`, without a store: for presentation tests."""
    return Approval(
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
        created_at=created_at,
        expires_at=created_at + new.timeout,
        version=version,
        argument_order=new.argument_order,
        **fields,
    )
