"""A task's statusMessage carries what the agent's model needs: who decided, how, and why."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from broker.approvals import Approval, ApprovalStatus, NewApproval
from broker.proxy.held_answers import status_text

CREATED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def approval(status: ApprovalStatus, **changes: object) -> Approval:
    new = NewApproval(
        agent="trader",
        server="exchange",
        tool="place_order",
        upstream_tool="place_order",
        arguments={"quantity": 10},
        policy_revision="r1",
        rule="rules[1]",
        rule_reason="big orders",
        timeout=timedelta(minutes=5),
    )
    base = Approval(
        id="a-1",
        status=status,
        agent=new.agent,
        session_id=None,
        server=new.server,
        tool=new.tool,
        upstream_tool=new.upstream_tool,
        arguments=dict(new.arguments),
        arguments_hash=new.arguments_hash,
        request_key=new.request_key,
        policy_revision=new.policy_revision,
        rule=new.rule,
        rule_reason=new.rule_reason,
        approvers=(),
        channels=(),
        created_at=CREATED,
        expires_at=CREATED + new.timeout,
        version=2,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "changes", "says"),
    [
        (
            ApprovalStatus.DENIED,
            {"decided_by": "alice", "decided_via": "web", "decision_reason": "not today"},
            "denied by alice via web: not today",
        ),
        (ApprovalStatus.DENIED, {"decided_by": "bob", "decided_via": "slack"}, "denied by bob via slack"),
        (
            ApprovalStatus.EXPIRED,
            {},
            "expired: nobody decided before the deadline (2026-03-01T12:05:00Z), so the call was "
            "automatically rejected; it was not denied by a human and was not executed",
        ),
    ],
)
def test_denied_and_expired_tasks_say_why(
    status: ApprovalStatus, changes: dict[str, object], says: str
) -> None:
    assert status_text(approval(status, **changes)) == says
