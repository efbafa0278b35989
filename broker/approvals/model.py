"""The approval record: one parked tools/call and everything decided about it.

Lifecycle (allowed moves live in `broker.approvals.transitions`)::

    pending ──> approved ──> released ──> completed
       │                                ├─> failed
       │                                └─> outcome_unknown
       ├──> denied
       ├──> expired
       └──> cancelled

Once approved, a call is no longer cancellable: the human said yes, and the
release may already be under way on another replica, so the only ways out are
completed, failed or outcome_unknown. ``failed`` means the call did not run upstream (it was never
sent, or the upstream refused it); ``outcome_unknown`` means it was sent and no answer came (the
upstream connection dropped, the release timed out, or the replica forwarding it died), so it
may well have run. Nothing in doubt is re-sent.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from broker.approvals.canonical import arguments_hash, canonical_json, request_key
from broker.policy.conditions import with_claims
from broker.policy.escalation import EscalationStep


class ApprovalStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    RELEASED = "released"
    COMPLETED = "completed"
    FAILED = "failed"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    OUTCOME_UNKNOWN = "outcome_unknown"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_decided(self) -> bool:
        """A human (or the timeout) has answered; the answer can no longer change."""
        return self is not ApprovalStatus.PENDING


@dataclass(frozen=True, slots=True)
class Approver:
    """A person who may decide approvals, as the channels authenticated them.

    `identified` is False for a person the broker knows only through a channel (a Slack user-group
    member with no approver entry, named ``slack:<member id>``): they may decide a single-approver
    rule, but never count toward a quorum, where they might be an approver counted a second time.
    """

    name: str
    groups: frozenset[str] = frozenset()
    identified: bool = True


@dataclass(frozen=True, slots=True)
class Vote:
    """One approver's yes toward a quorum, as stored (see broker.approvals.quorum)."""

    approver: str
    groups: frozenset[str]
    via: str
    at: datetime


_TERMINAL = frozenset(
    {
        ApprovalStatus.COMPLETED,
        ApprovalStatus.FAILED,
        ApprovalStatus.DENIED,
        ApprovalStatus.EXPIRED,
        ApprovalStatus.CANCELLED,
        ApprovalStatus.OUTCOME_UNKNOWN,
    }
)

DELIVERABLE_STATUSES = frozenset(
    {
        ApprovalStatus.COMPLETED,
        ApprovalStatus.FAILED,
        ApprovalStatus.DENIED,
        ApprovalStatus.EXPIRED,
        ApprovalStatus.OUTCOME_UNKNOWN,
    }
)
"""Outcomes an agent can be handed (a cancelled call has nobody left to receive it)."""


@dataclass(frozen=True, slots=True)
class NewApproval:
    """What the proxy knows when it parks a call; the store adds id, timestamps and status.

    `arguments` are the exact arguments that will be forwarded if approved.
    `arguments_hash` and `request_key` are derived here so a caller can look up an
    open approval for the same call before creating a new one.
    """

    agent: str
    server: str
    tool: str
    upstream_tool: str
    arguments: Mapping[str, Any]
    policy_revision: str
    rule: str
    rule_reason: str
    timeout: timedelta
    session_id: str | None = None
    approvers: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    task_id: str | None = None
    quorum: int = 1
    """Distinct approvers whose yes releases the call (1: the first decision is final)."""
    quorum_from: tuple[str, ...] = ()
    """Groups (``@risk``) that must each be represented by a different one of those approvers."""
    escalation: tuple[EscalationStep, ...] = ()
    """Who is asked next when nobody decided (the rule's steps, kept with the call: a reload does
    not change the plan of a call already waiting; see broker.approvals.escalation)."""
    editable: tuple[str, ...] = ()
    """Top-level arguments approvers may change before approving (the rule's ``editable``)."""
    claims: Mapping[str, Any] | None = None
    """The verified access token's claims the call was decided with (None: an API-key agent), so
    every later re-check reads the same ``claims.`` paths; never the token itself."""
    arguments_hash: str = field(init=False)
    request_key: str = field(init=False)
    argument_order: tuple[str, ...] = field(init=False)
    """The top-level argument names in the order the agent sent them (the stored arguments are
    canonical, keys sorted): people read a call in the agent's order."""

    def __post_init__(self) -> None:
        for name in ("agent", "server", "tool", "upstream_tool"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"NewApproval.{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.arguments, Mapping):
            kind = type(self.arguments).__name__
            raise ValueError(f"NewApproval.arguments must be a JSON object, got {kind}")
        if not isinstance(self.timeout, timedelta) or self.timeout <= timedelta(0):
            raise ValueError(f"NewApproval.timeout must be a positive timedelta, got {self.timeout!r}")
        for name in ("approvers", "channels"):
            values = tuple(getattr(self, name))
            if not all(isinstance(item, str) and item for item in values):
                raise ValueError(f"NewApproval.{name} must contain non-empty strings, got {values!r}")
            object.__setattr__(self, name, values)
        if not isinstance(self.quorum, int) or self.quorum < 1 or self.quorum < len(self.quorum_from):
            raise ValueError(
                f"NewApproval.quorum must be at least 1 and cover quorum_from, got {self.quorum!r}"
            )
        object.__setattr__(self, "quorum_from", tuple(self.quorum_from))
        object.__setattr__(self, "escalation", tuple(self.escalation))
        object.__setattr__(self, "editable", tuple(self.editable))
        if self.task_id is not None and (not isinstance(self.task_id, str) or not self.task_id):
            raise ValueError(f"NewApproval.task_id must be a non-empty string or None, got {self.task_id!r}")
        if self.claims is not None and not isinstance(self.claims, Mapping):
            raise ValueError(
                f"NewApproval.claims must be a JSON object or None, got {type(self.claims).__name__}"
            )
        if self.claims is not None:
            object.__setattr__(self, "claims", json.loads(canonical_json(self.claims)))
        object.__setattr__(self, "argument_order", tuple(str(key) for key in self.arguments))
        # A canonical round trip deep-copies the arguments into exactly the shape the
        # store will hand back (tuples become lists), so the hash and the row agree.
        object.__setattr__(self, "arguments", json.loads(canonical_json(self.arguments)))
        digest = arguments_hash(self.arguments)
        object.__setattr__(self, "arguments_hash", digest)
        object.__setattr__(self, "request_key", request_key(self.agent, self.tool, digest))


@dataclass(frozen=True, slots=True)
class Approval:
    """A persisted approval as read from the store. Treat `arguments` and `result` as read-only."""

    id: str
    status: ApprovalStatus
    agent: str
    session_id: str | None
    server: str
    tool: str
    upstream_tool: str
    arguments: dict[str, Any]
    arguments_hash: str
    request_key: str
    policy_revision: str
    rule: str
    rule_reason: str
    approvers: tuple[str, ...]
    channels: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    version: int
    decided_by: str | None = None
    decided_at: datetime | None = None
    decided_via: str | None = None
    decision_reason: str | None = None
    released_at: datetime | None = None
    released_by: str | None = None
    completed_at: datetime | None = None
    result: dict[str, Any] | None = None
    result_delivered_at: datetime | None = None
    task_id: str | None = None
    slack_channel: str | None = None
    slack_ts: str | None = None
    argument_order: tuple[str, ...] = ()
    """Top-level argument names as the agent ordered them; empty for approvals stored before it was kept."""
    callers: int = 1
    """How many agent requests this approval answers: the first, plus every identical call that
    attached to it (see `ApprovalStore.find_or_create`)."""
    pending_told_at: datetime | None = None
    """When an agent was first handed the "pending approval" answer: from then on only an
    explicit cancellation withdraws the call (a pending answer is a promise)."""
    quorum: int = 1
    """Distinct approvers needed (see `NewApproval.quorum`)."""
    quorum_from: tuple[str, ...] = ()
    votes: tuple[Vote, ...] = ()
    """The yes votes recorded toward the quorum so far, oldest first (empty for quorum 1)."""
    escalation: tuple[EscalationStep, ...] = ()
    """The escalation plan the call was held with (see `NewApproval.escalation`)."""
    escalation_step: int = 0
    """How many of its steps have been reached (0: none)."""
    next_escalation_at: datetime | None = None
    """When the next step is due; None when there is none left."""

    @property
    def escalated_to(self) -> tuple[str, ...]:
        """Approvers the steps reached so far added (beside the rule's own)."""
        reached = self.escalation[: self.escalation_step]
        return tuple(dict.fromkeys(name for step in reached for name in step.to))

    @property
    def escalated_channels(self) -> tuple[str, ...]:
        """Channels the steps reached so far announced the call in."""
        reached = self.escalation[: self.escalation_step]
        return tuple(dict.fromkeys(channel for step in reached for channel in step.channels))

    editable: tuple[str, ...] = ()
    """Top-level arguments approvers may change before approving (see broker.approvals.edits)."""
    original_arguments: dict[str, Any] | None = None
    """The arguments as the agent sent them, once an approver changed them (None: never edited).
    `arguments` and `arguments_hash` are then what was approved and runs; `request_key` stays the
    original call's, so the agent's identical re-call still finds this approval."""
    edited_by: str | None = None
    edited_at: datetime | None = None
    claims: dict[str, Any] | None = None
    """The agent's token claims the call was held with (see `NewApproval.claims`); not for display."""

    def as_decided(self, arguments: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
        """`arguments` (by default the stored ones) as the policy reads them on a re-check: with
        the claims the call came with, so ``claims.`` conditions hold as they did when it was held."""
        chosen = self.arguments if arguments is None else arguments
        return chosen if self.claims is None else with_claims(chosen, self.claims)

    @property
    def is_edited(self) -> bool:
        return self.original_arguments is not None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @property
    def is_delivered(self) -> bool:
        return self.result_delivered_at is not None

    def time_left(self, now: datetime) -> timedelta:
        """Time until the approval expires, never negative; zero once decided."""
        if self.status is not ApprovalStatus.PENDING:
            return timedelta(0)
        return max(self.expires_at - now, timedelta(0))

    def is_overdue(self, now: datetime) -> bool:
        """Still pending although its deadline has passed (the sweeper has not caught it yet)."""
        return self.status is ApprovalStatus.PENDING and now >= self.expires_at

    def has_vote_from(self, approver: str) -> bool:
        """`approver`'s yes is among the votes recorded toward its quorum."""
        return any(vote.approver == approver for vote in self.votes)
