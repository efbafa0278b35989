"""How an approval row carries its escalation (migration 0007): the plan, the step reached, and
when the next step is due."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import RowMapping

from broker.approvals.model import Approval
from broker.policy.escalation import EscalationStep


def first_escalation_at(created_at: datetime, steps: Sequence[EscalationStep]) -> datetime | None:
    return created_at + timedelta(seconds=steps[0].after_seconds) if steps else None


def escalation_columns(approval: Approval) -> dict[str, Any]:
    return {
        "escalation": [step.to_json() for step in approval.escalation],
        "escalation_step": approval.escalation_step,
        "next_escalation_at": approval.next_escalation_at,
    }


def escalation_fields(row: RowMapping) -> dict[str, Any]:
    return {
        "escalation": tuple(EscalationStep.from_json(raw) for raw in row["escalation"]),
        "escalation_step": row["escalation_step"],
        "next_escalation_at": row["next_escalation_at"],
    }
