"""Which fields a transition or a bookkeeping update may set on an approval row, checked before
any SQL runs, and the fields a transition implies (who decided, released or completed, and when)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from broker.approvals.canonical import canonical_json
from broker.approvals.clock import require_utc
from broker.approvals.model import ApprovalStatus
from broker.approvals.ports import InvalidValue

NUL = "\x00"
"""PostgreSQL text cannot hold it; refused on every backend so both behave alike."""

# Fields a transition may set alongside the status, with the type each must have.
TRANSITION_FIELDS: Mapping[str, type] = {
    "decided_by": str,
    "decided_at": datetime,
    "decided_via": str,
    "decision_reason": str,
    "released_at": datetime,
    "released_by": str,
    "completed_at": datetime,
    "result": dict,
    "result_delivered_at": datetime,
    "task_id": str,
    "slack_channel": str,
    "slack_ts": str,
}
# Bookkeeping fields that carry no state and may change outside a transition.
BOOKKEEPING_FIELDS: Mapping[str, type] = {
    **{
        name: TRANSITION_FIELDS[name]
        for name in ("slack_channel", "slack_ts", "result_delivered_at", "task_id")
    },
    "pending_told_at": datetime,
    "callers": int,
}
_DECISIONS = frozenset(
    {ApprovalStatus.APPROVED, ApprovalStatus.DENIED, ApprovalStatus.EXPIRED, ApprovalStatus.CANCELLED}
)
_OUTCOMES = frozenset({ApprovalStatus.COMPLETED, ApprovalStatus.FAILED, ApprovalStatus.OUTCOME_UNKNOWN})


def validated_changes(changes: Mapping[str, Any], allowed: Mapping[str, type]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in changes.items():
        kind = allowed.get(name)
        if kind is None:
            raise ValueError(f"field {name!r} cannot be changed here; allowed: {', '.join(sorted(allowed))}")
        if value is None:
            values[name] = None
        elif not isinstance(value, kind):
            raise ValueError(f"field {name!r} must be {kind.__name__} or None, got {type(value).__name__}")
        elif isinstance(value, datetime):
            values[name] = require_utc(value, field=name)
        elif isinstance(value, dict):
            canonical_json(value)  # refuse values that would not survive storage
            values[name] = value
        elif isinstance(value, str) and NUL in value:
            raise InvalidValue(f"{name} contains a NUL character, which the store cannot keep")
        else:
            values[name] = value
    return values


def implied_fields(to: ApprovalStatus, *, actor: str, now: datetime) -> dict[str, Any]:
    if to in _DECISIONS:
        return {"decided_at": now, "decided_by": actor}
    if to is ApprovalStatus.RELEASED:
        return {"released_at": now, "released_by": actor}
    if to in _OUTCOMES:
        return {"completed_at": now}
    return {}
