"""The approval store's schema. `migrations/versions/` must create exactly this (a test compares them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from broker.approvals.model import ApprovalStatus
from broker.store.columns import CanonicalJSON, UTCDateTime

_STATUS_VALUES = ", ".join(f"'{status.value}'" for status in ApprovalStatus)


class StoreModel(
    SQLModel, registry=registry(metadata=MetaData(naming_convention={"pk": "pk_%(table_name)s"}))
):
    """Base with a private registry, so other components' tables never leak into this schema."""


class ApprovalRow(StoreModel, table=True):
    __tablename__ = "approvals"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUS_VALUES})", name="ck_approvals_status"),
        Index("ix_approvals_status_expires_at", "status", "expires_at"),
        Index("ix_approvals_request_key", "request_key"),
        Index("ix_approvals_task_id", "task_id", unique=True),
        Index("ix_approvals_created_at", "created_at"),
        # The listings (see broker/store/listing.py): every filter reads rows already in order.
        Index("ix_approvals_status_created_at_id", "status", "created_at", "id"),
        Index("ix_approvals_status_agent_created_at_id", "status", "agent", "created_at", "id"),
        Index("ix_approvals_status_tool_created_at_id", "status", "tool", "created_at", "id"),
        Index(
            "ix_approvals_decided_created_at_id",
            "created_at",
            "id",
            sqlite_where=text("status <> 'pending'"),
            postgresql_where=text("status <> 'pending'"),
        ),
        Index("ix_approvals_status_next_escalation_at", "status", "next_escalation_at"),
    )

    id: str = Field(sa_column=Column(Text, primary_key=True))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    agent: str = Field(sa_column=Column(Text, nullable=False))
    session_id: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    server: str = Field(sa_column=Column(Text, nullable=False))
    tool: str = Field(sa_column=Column(Text, nullable=False))
    upstream_tool: str = Field(sa_column=Column(Text, nullable=False))
    arguments: dict[str, Any] = Field(sa_column=Column(CanonicalJSON, nullable=False))
    arguments_hash: str = Field(sa_column=Column(String(64), nullable=False))
    request_key: str = Field(sa_column=Column(String(64), nullable=False))
    policy_revision: str = Field(sa_column=Column(Text, nullable=False))
    rule: str = Field(sa_column=Column(Text, nullable=False))
    rule_reason: str = Field(sa_column=Column(Text, nullable=False))
    approvers: list[str] = Field(sa_column=Column(CanonicalJSON, nullable=False))
    channels: list[str] = Field(sa_column=Column(CanonicalJSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    decided_by: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    decided_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    decided_via: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    decision_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    released_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    released_by: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    completed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(CanonicalJSON, nullable=True))
    result_delivered_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    task_id: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    slack_channel: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    slack_ts: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    argument_order: list[str] = Field(
        default_factory=list, sa_column=Column(CanonicalJSON, nullable=False, server_default="[]")
    )
    callers: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))
    pending_told_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    quorum: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))
    quorum_from: list[str] = Field(
        default_factory=list, sa_column=Column(CanonicalJSON, nullable=False, server_default="[]")
    )
    votes: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(CanonicalJSON, nullable=False, server_default="[]")
    )
    """The yes votes so far, as shown (the ``votes`` table is the record; see broker.store.votes)."""
    escalation: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(CanonicalJSON, nullable=False, server_default="[]")
    )
    escalation_step: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    next_escalation_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    editable: list[str] = Field(
        default_factory=list, sa_column=Column(CanonicalJSON, nullable=False, server_default="[]")
    )
    original_arguments: dict[str, Any] | None = Field(
        default=None, sa_column=Column(CanonicalJSON, nullable=True)
    )
    edited_by: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    edited_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    """Approve with edits (migration 0008; see broker.store.edits)."""
    claims: dict[str, Any] | None = Field(default=None, sa_column=Column(CanonicalJSON, nullable=True))
    """The agent's token claims the call was held with, for re-checks (migration 0017)."""
    version: int = Field(sa_column=Column(Integer, nullable=False))


class AuditEventRow(StoreModel, table=True):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_approval_id_seq", "approval_id", "seq"),)

    # seq is assigned by the writer holding the chain lock (it is part of the hashed
    # content), never by a sequence, so the column must not autoincrement.
    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    approval_id: str = Field(
        sa_column=Column(Text, ForeignKey("approvals.id", name="fk_audit_events_approval_id"), nullable=False)
    )
    event: str = Field(sa_column=Column(String(64), nullable=False))
    actor: str = Field(sa_column=Column(Text, nullable=False))
    at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    # Plain text, not CanonicalJSON: verification must survive rows edited into invalid JSON.
    details: str = Field(sa_column=Column(Text, nullable=False))
    prev_hash: str = Field(sa_column=Column(String(64), nullable=False))
    hash: str = Field(sa_column=Column(String(64), nullable=False))


class SeenRequestRow(StoreModel, table=True):
    """Signed requests already accepted (Slack interactions), kept until their signature would
    expire anyway, so a replayed one is refused on every replica."""

    __tablename__ = "seen_requests"
    __table_args__ = (Index("ix_seen_requests_expires_at", "expires_at"),)

    digest: str = Field(sa_column=Column(String(64), primary_key=True))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class VoteRow(StoreModel, table=True):
    """One approver's yes toward an approval's quorum. The primary key is the uniqueness that makes
    a person count once, even when two replicas record their votes at the same moment."""

    __tablename__ = "votes"

    approval_id: str = Field(
        sa_column=Column(
            Text, ForeignKey("approvals.id", name="fk_votes_approval_id"), primary_key=True, nullable=False
        )
    )
    approver: str = Field(sa_column=Column(Text, primary_key=True, nullable=False))
    groups: list[str] = Field(sa_column=Column(CanonicalJSON, nullable=False))
    via: str = Field(sa_column=Column(Text, nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    grant_request: dict[str, Any] | None = Field(default=None, sa_column=Column(CanonicalJSON, nullable=True))
    """The grant this voter asked for beside their yes (broker.approvals.grants), if any."""


class GrantRow(StoreModel, table=True):
    """A time-boxed grant (broker.approvals.grants); one per approval at most, its id derived from it.
    ``used_calls`` only grows, by a compare-and-increment that keeps it at most ``max_calls``."""

    __tablename__ = "grants"
    __table_args__ = (
        CheckConstraint("used_calls <= max_calls", name="ck_grants_used_calls"),
        Index("ix_grants_agent_tool", "agent", "server", "tool"),
        Index("ix_grants_created_at", "created_at"),
    )

    id: str = Field(sa_column=Column(Text, primary_key=True))
    approval_id: str = Field(
        sa_column=Column(Text, ForeignKey("approvals.id", name="fk_grants_approval_id"), nullable=False)
    )
    agent: str = Field(sa_column=Column(Text, nullable=False))
    server: str = Field(sa_column=Column(Text, nullable=False))
    tool: str = Field(sa_column=Column(Text, nullable=False))
    rule: str = Field(sa_column=Column(Text, nullable=False))
    policy_revision: str = Field(sa_column=Column(Text, nullable=False))
    scope: str = Field(sa_column=Column(String(16), nullable=False))
    arguments_hash: str = Field(sa_column=Column(String(64), nullable=False))
    created_by: list[str] = Field(sa_column=Column(CanonicalJSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    max_calls: int = Field(sa_column=Column(Integer, nullable=False))
    used_calls: int = Field(sa_column=Column(Integer, nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    revoked_by: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class EscalationPostRow(StoreModel, table=True):
    """One post an escalation step owes in one channel (broker.approvals.escalation_posts): claimed by
    one writer at a time (compare-and-set on ``writer``/``claimed_until``), settled once."""

    __tablename__ = "escalation_posts"

    approval_id: str = Field(
        sa_column=Column(
            Text,
            ForeignKey("approvals.id", name="fk_escalation_posts_approval_id"),
            primary_key=True,
            nullable=False,
        )
    )
    step: int = Field(sa_column=Column(Integer, primary_key=True, nullable=False))
    channel: str = Field(sa_column=Column(Text, primary_key=True, nullable=False))
    writer: str = Field(sa_column=Column(Text, nullable=False))
    claimed_until: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    outcome: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    ts: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class SpendEntryRow(StoreModel, table=True):
    """Spend counted against a limit's counter (broker.store.spend): reserved while ``lease_until`` is
    set, committed once it is NULL. Amounts are whole units of 10^-6 (broker.policy.limits)."""

    __tablename__ = "spend_entries"
    __table_args__ = (
        Index("ix_spend_entries_counter_at", "counter", "at"),
        Index("ix_spend_entries_at", "at"),
    )

    reservation: str = Field(sa_column=Column(Text, primary_key=True, nullable=False))
    counter: str = Field(sa_column=Column(Text, primary_key=True, nullable=False))
    at: float = Field(sa_column=Column(Float(precision=53), nullable=False))
    units: int = Field(sa_column=Column(BigInteger, nullable=False))
    lease_until: float | None = Field(default=None, sa_column=Column(Float(precision=53), nullable=True))


class ToolPinRow(StoreModel, table=True):
    """The accepted and the last seen definition hash of one upstream tool (broker.catalogue.pins)."""

    __tablename__ = "tool_pins"

    server: str = Field(sa_column=Column(Text, primary_key=True, nullable=False))
    tool: str = Field(sa_column=Column(Text, primary_key=True, nullable=False))
    seen_hash: str = Field(sa_column=Column(String(64), nullable=False))
    accepted_hash: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    first_seen_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    seen_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    accepted_by: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    accepted_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))


class ToolEventRow(StoreModel, table=True):
    """A tool definition seen, changed or accepted (broker.catalogue.tool_events)."""

    __tablename__ = "tool_events"
    __table_args__ = (Index("ix_tool_events_server_tool_id", "server", "tool", "id"),)

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    server: str = Field(sa_column=Column(Text, nullable=False))
    tool: str = Field(sa_column=Column(Text, nullable=False))
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    old_hash: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    new_hash: str = Field(sa_column=Column(String(64), nullable=False))
    actor: str = Field(sa_column=Column(Text, nullable=False))
    at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    changes: list[str] = Field(default_factory=list, sa_column=Column(CanonicalJSON, nullable=False))
    # The pinned fields as listed (canonical JSON), so the next change can say what differs;
    # None on an acceptance, or when the definition was not JSON-exact.
    definition: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


metadata: MetaData = StoreModel.metadata
approvals: Table = metadata.tables["approvals"]
audit_events: Table = metadata.tables["audit_events"]
seen_requests: Table = metadata.tables["seen_requests"]
votes: Table = metadata.tables["votes"]
grants: Table = metadata.tables["grants"]
escalation_posts: Table = metadata.tables["escalation_posts"]
spend_entries: Table = metadata.tables["spend_entries"]
tool_pins: Table = metadata.tables["tool_pins"]
tool_events: Table = metadata.tables["tool_events"]
