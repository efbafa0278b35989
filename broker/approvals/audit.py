"""The append-only, hash-chained audit log of approvals.

Every row's hash covers the previous row's hash, so editing a row breaks its own
hash and deleting one leaves a gap in `seq` (or, if the rows after it were
renumbered and rehashed, a prev_hash that no longer matches). A chain alone cannot
reveal the loss of its newest rows, so verification also checks that every approval
still has the events its status implies (an approval that is completed has its
``approved``, ``released`` and ``completed`` events), and operators can anchor the
head elsewhere: `AuditVerification.head_seq`/`head_hash` recorded today must still
be in the chain tomorrow (``broker audit verify --expect-head SEQ:HASH``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from broker.approvals.canonical import GENESIS_HASH, audit_hash, canonical_json
from broker.approvals.model import ApprovalStatus, NewApproval

_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class AuditEventKind(enum.StrEnum):
    """Events the broker itself records; channels may add their own (e.g. ``slack_post_failed``)."""

    REQUESTED = "requested"
    NOTIFIED = "notified"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    RELEASED = "released"
    COMPLETED = "completed"
    FAILED = "failed"
    DELIVERED = "delivered"
    OUTCOME_UNKNOWN = "outcome_unknown"
    ATTACHED = "attached"
    PENDING_TOLD = "pending_told"
    VOTED = "voted"
    """One approver's yes toward a quorum (their repeats included); the deciding one is followed
    by ``approved``."""
    ESCALATED = "escalated"
    """Nobody decided in time and a step of the rule's ``escalate`` was reached (one per step)."""
    EDITED = "edited"
    """An approver changed editable arguments (both hashes, each change); their vote follows."""
    GRANTED = "granted"
    """The approval's quorum also gave a time-boxed grant (broker.approvals.grants); its uses are
    counted on the grant row and in the decision log, not audited one by one."""
    GRANT_REVOKED = "grant_revoked"

    @classmethod
    def for_status(cls, status: ApprovalStatus) -> AuditEventKind:
        """The event that records entering `status` (every status but pending has one)."""
        if status is ApprovalStatus.PENDING:
            return cls.REQUESTED
        return cls(status.value)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """An event to append. The store assigns seq, time and hashes.

    `approval_id` may be left out when the event accompanies `create` or
    `transition`, where the store knows which approval it belongs to.
    """

    event: str
    actor: str
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    approval_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not _EVENT_NAME.match(self.event):
            raise ValueError(f"audit event name must match {_EVENT_NAME.pattern}, got {self.event!r}")
        if not isinstance(self.actor, str) or not self.actor:
            raise ValueError(f"audit actor must be a non-empty string, got {self.actor!r}")
        if not isinstance(self.details, Mapping):
            raise ValueError(f"audit details must be a mapping, got {type(self.details).__name__}")
        canonical_json(self.details)  # refuse unhashable details now, not inside a transaction
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    def for_approval(self, approval_id: str) -> AuditEvent:
        """This event bound to `approval_id`; refuses to re-bind an event aimed at another approval."""
        if self.approval_id is not None and self.approval_id != approval_id:
            raise ValueError(
                f"audit event names approval {self.approval_id!r} but is recorded for {approval_id!r}"
            )
        return AuditEvent(self.event, self.actor, self.details, approval_id)


def requested_event(new: NewApproval, **extra: Any) -> AuditEvent:
    """The ``requested`` event that opens every approval's trail (`extra`: e.g. the grant)."""
    return AuditEvent(
        AuditEventKind.REQUESTED,
        new.agent,
        {
            "tool": new.tool,
            "server": new.server,
            "arguments_sha256": new.arguments_hash,
            "rule": new.rule,
            "policy_revision": new.policy_revision,
            **extra,
        },
    )


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored audit row."""

    seq: int
    approval_id: str
    event: str
    actor: str
    at: datetime
    details: Mapping[str, Any]
    prev_hash: str
    hash: str

    def expected_hash(self) -> str:
        return audit_hash(
            self.prev_hash,
            seq=self.seq,
            approval_id=self.approval_id,
            event=self.event,
            actor=self.actor,
            at=self.at,
            details=self.details,
        )


_PATHS: Mapping[ApprovalStatus, tuple[str, ...]] = {
    ApprovalStatus.PENDING: ("requested",),
    ApprovalStatus.APPROVED: ("requested", "approved"),
    ApprovalStatus.RELEASED: ("requested", "approved", "released"),
    ApprovalStatus.COMPLETED: ("requested", "approved", "released", "completed"),
    ApprovalStatus.FAILED: ("requested", "approved", "released", "failed"),
    ApprovalStatus.DENIED: ("requested", "denied"),
    ApprovalStatus.EXPIRED: ("requested", "expired"),
    ApprovalStatus.CANCELLED: ("requested", "cancelled"),
    ApprovalStatus.OUTCOME_UNKNOWN: ("requested", "approved", "released", "outcome_unknown"),
}


def missing_events(status: ApprovalStatus, recorded: set[str], *, delivered: bool) -> tuple[str, ...]:
    """The events an approval in `status` (its outcome `delivered` to the agent or not) must have
    in the log but has not."""
    required = (*_PATHS[status], "delivered") if delivered else _PATHS[status]
    return tuple(event for event in required if event not in recorded)


class ChainProblem(enum.StrEnum):
    HASH_MISMATCH = "hash_mismatch"
    """The row's content no longer matches its hash: it was modified."""
    PREV_HASH_MISMATCH = "prev_hash_mismatch"
    """The row does not follow the one before it: a row was replaced, or removed and the rest renumbered."""
    MISSING_ROW = "missing_row"
    """A seq is absent: the row was deleted."""
    UNREADABLE_ROW = "unreadable_row"
    """The row's details are not valid JSON: it was modified outside the broker."""
    MISSING_EVENTS = "missing_events"
    """An approval lacks events its status implies: rows at the end of the chain were deleted."""
    HEAD_MISSING = "head_missing"
    """The head recorded earlier is no longer in the chain: its newest rows were deleted or rewritten."""


@dataclass(frozen=True, slots=True)
class AuditVerification:
    ok: bool
    rows_checked: int
    head_hash: str
    head_seq: int = 0
    broken_seq: int | None = None
    problem: ChainProblem | None = None
    explanation: str | None = None


class ChainVerifier:
    """Checks audit rows fed in seq order and remembers the first break."""

    def __init__(self) -> None:
        self._expected_seq = 1
        self._prev_hash = GENESIS_HASH
        self._rows = 0
        self._failure: tuple[int | None, ChainProblem, str] | None = None
        self.hashes_at: dict[int, str] = {}
        """Hashes of the rows whose seq was asked for in advance (anchors), as verified."""

    @property
    def broken(self) -> bool:
        return self._failure is not None

    def feed(self, record: AuditRecord) -> bool:
        """Check the next row; returns False once the chain is broken (later rows are not checked)."""
        if self._failure is not None:
            return False
        if record.seq != self._expected_seq:
            self._fail(
                self._expected_seq,
                ChainProblem.MISSING_ROW,
                f"seq {self._expected_seq} is missing: seq {record.seq} follows seq {self._expected_seq - 1}",
            )
            return False
        if record.prev_hash != self._prev_hash:
            self._fail(
                record.seq,
                ChainProblem.PREV_HASH_MISMATCH,
                f"seq {record.seq} does not chain to the row before it (prev_hash {record.prev_hash[:12]}… "
                f"expected {self._prev_hash[:12]}…)",
            )
            return False
        if record.expected_hash() != record.hash:
            self._fail(
                record.seq, ChainProblem.HASH_MISMATCH, f"seq {record.seq} was modified after it was written"
            )
            return False
        self._rows += 1
        self._expected_seq += 1
        self._prev_hash = record.hash
        if record.seq in self.hashes_at:
            self.hashes_at[record.seq] = record.hash
        return True

    def unreadable(self, seq: int, reason: str) -> None:
        """Report a row the store could not decode, which counts as a break at that seq."""
        if self._failure is not None:
            return
        if seq != self._expected_seq:
            self._fail(self._expected_seq, ChainProblem.MISSING_ROW, f"seq {self._expected_seq} is missing")
        else:
            self._fail(seq, ChainProblem.UNREADABLE_ROW, f"seq {seq} cannot be read: {reason}")

    def fail(self, problem: ChainProblem, explanation: str, *, seq: int | None = None) -> None:
        """Report a break found outside the chain's own links (see ChainProblem)."""
        if self._failure is None:
            self._failure = (seq, problem, explanation)

    def result(self) -> AuditVerification:
        head_seq = self._expected_seq - 1
        if self._failure is None:
            return AuditVerification(
                ok=True, rows_checked=self._rows, head_hash=self._prev_hash, head_seq=head_seq
            )
        seq, problem, explanation = self._failure
        return AuditVerification(
            ok=False,
            rows_checked=self._rows,
            head_hash=self._prev_hash,
            head_seq=head_seq,
            broken_seq=seq,
            problem=problem,
            explanation=explanation,
        )

    def _fail(self, seq: int, problem: ChainProblem, explanation: str) -> None:
        self._failure = (seq, problem, explanation)
