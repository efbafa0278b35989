"""Parked tool calls waiting for a human: the domain model, state machine and storage port."""

from broker.approvals.audit import (
    AuditEvent,
    AuditEventKind,
    AuditRecord,
    AuditVerification,
    ChainProblem,
)
from broker.approvals.model import DELIVERABLE_STATUSES, Approval, ApprovalStatus, NewApproval
from broker.approvals.ports import (
    ApprovalConflict,
    ApprovalError,
    ApprovalNotFound,
    ApprovalStore,
    InvalidTransition,
    InvalidValue,
    ListPosition,
    StoreUnavailable,
)
from broker.approvals.transitions import ALLOWED_TRANSITIONS, check_transition, is_allowed

__all__ = [
    "ALLOWED_TRANSITIONS",
    "DELIVERABLE_STATUSES",
    "Approval",
    "ApprovalConflict",
    "ApprovalError",
    "ApprovalNotFound",
    "ApprovalStatus",
    "ApprovalStore",
    "AuditEvent",
    "AuditEventKind",
    "AuditRecord",
    "AuditVerification",
    "ChainProblem",
    "InvalidTransition",
    "InvalidValue",
    "ListPosition",
    "NewApproval",
    "StoreUnavailable",
    "check_transition",
    "is_allowed",
]
