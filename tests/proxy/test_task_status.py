"""A task's statusMessage carries what the agent's model needs: who decided, how, and why."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from broker.approvals import Approval, ApprovalStatus, NewApproval
from broker.proxy.held_answers import status_text
from tests.store.builders import as_stored

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
    base = as_stored(
        new,
        approval_id="a-1",
        created_at=CREATED,
        status=status,
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
