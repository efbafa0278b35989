"""What the approval layer needs from storage, and the errors it can raise.

Exception tree::

    ApprovalError                  base of everything below
    ├── ApprovalNotFound           no approval has that id
    ├── InvalidTransition          the approval is not in a state the caller expected
    │                              (lost a race, or already decided); `.current` is the fresh row
    │   └── ArgumentsChanged       a yes for arguments the call no longer has (an approver
    │                              edited them meanwhile); `.current` shows the new ones
    ├── ApprovalConflict           a unique value (approval id, task id) is already taken
    ├── InvalidValue               a value the store cannot keep (e.g. a NUL character); nothing changed
    └── StoreUnavailable           the database could not be reached or failed mid-operation;
                                   callers must fail closed (never forward a held call on this)

Programming errors (an impossible transition, a field that may not be changed)
raise ValueError and are not part of the tree.
"""

from __future__ import annotations

import base64
import builtins
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from broker.approvals.audit import AuditEvent, AuditRecord, AuditVerification
from broker.approvals.clock import require_utc
from broker.approvals.grants import Grant, GrantRequest
from broker.approvals.model import Approval, ApprovalStatus, NewApproval, Vote
from broker.approvals.quorum import Tally


class ApprovalError(Exception):
    """Base class of approval store errors."""


class ApprovalNotFound(ApprovalError):
    def __init__(self, approval_id: str) -> None:
        super().__init__(f"no approval with id {approval_id!r}")
        self.approval_id = approval_id


class InvalidTransition(ApprovalError):
    """The compare-and-set did not apply. `current` says who got there first and when."""

    def __init__(
        self,
        current: Approval,
        *,
        expected: Collection[ApprovalStatus],
        to: ApprovalStatus | None = None,
    ) -> None:
        wanted = ", ".join(sorted(status.value for status in expected))
        action = f"move to {to.value}" if to is not None else "apply the change"
        message = f"approval {current.id} is {current.status.value}, expected {wanted}: cannot {action}"
        if current.decided_by is not None and current.decided_at is not None:
            message += f" (decided by {current.decided_by} at {current.decided_at.isoformat()})"
        super().__init__(message)
        self.current = current
        self.expected = frozenset(expected)
        self.to = to


class ArgumentsChanged(InvalidTransition):
    """The yes was given for arguments the call no longer has: someone edited them in between.
    Nothing was recorded; the person must look at the call again (`current`)."""

    def __init__(self, current: Approval, *, seen_hash: str) -> None:
        super().__init__(current, expected={current.status})
        by = f" by {current.edited_by}" if current.edited_by else ""
        self.args = (
            f"approval {current.id}: its arguments were changed{by} since you looked "
            f"(you saw {seen_hash[:12]}, it now has {current.arguments_hash[:12]}); look again before deciding",
        )
        self.seen_hash = seen_hash


class ApprovalConflict(ApprovalError):
    """A value that must be unique is already used by another approval."""


class InvalidValue(ApprovalError, ValueError):
    """A value (e.g. a decision reason) the database cannot store; the caller sent bad input."""


class StoreUnavailable(ApprovalError):
    """The database could not be reached or refused the operation. Fail closed."""


class ListPosition(NamedTuple):
    """Where a page of `ApprovalStore.list` ended: the next page starts just after this row.

    Approvals are listed by `created_at` (newest or oldest first) and ties are broken by id, so
    the pair names one place in the order; paging on the time alone would skip rows sharing it.
    """

    created_at: datetime
    approval_id: str

    @classmethod
    def of(cls, approval: Approval) -> ListPosition:
        return cls(approval.created_at, approval.id)

    def token(self) -> str:
        """An opaque cursor for clients (`tasks/list`, the API, the history page's next link)."""
        raw = f"{self.created_at.isoformat()}\n{self.approval_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def from_token(cls, token: str) -> ListPosition:
        """Raises ValueError for anything `token()` did not make."""
        refused = ValueError(f"not a cursor this broker handed out: {token[:80]!r}")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            moment, approval_id = raw.split("\n", 1)
            created_at = require_utc(datetime.fromisoformat(moment), field="cursor time")
        except ValueError:  # bad base64, UTF-8 or time, no zone, or a time UTC cannot hold
            raise refused from None
        if not approval_id or not approval_id.isprintable():
            raise refused
        return cls(created_at, approval_id)


class ApprovalStore(Protocol):
    """Persistence of approvals and their audit trail.

    Every write that changes state is a compare-and-set evaluated by the database,
    so any number of broker replicas can share one store.
    """

    async def create(self, new: NewApproval, *, audit: AuditEvent) -> Approval:
        """Insert a pending approval and its first audit event atomically."""
        ...

    async def create_decided(
        self,
        new: NewApproval,
        *,
        to: ApprovalStatus,
        changes: Mapping[str, Any] = ...,
        audit: Sequence[AuditEvent],
    ) -> Approval:
        """Insert an approval already in state `to` (one of transitions.CREATION_STATES other than
        pending), with the decision's fields as `transition` would set them (`changes` over the
        implied ones, whose actor is the last event's) and every event of `audit` (the request, then
        the decision), in one transaction: it is never pending, not even for a moment."""
        ...

    async def find_or_create(self, new: NewApproval, *, audit: AuditEvent) -> tuple[Approval, bool]:
        """Attach to the open approval for this exact call, or create it: atomically, across replicas.

        "Open" is the newest approval with the same request key that is not cancelled and
        whose outcome has not been delivered yet: pending/approved/released, or a finished
        outcome still waiting for its agent. Returns the approval and whether it was
        created (then with `audit` recorded).
        """
        ...

    async def get(self, approval_id: str) -> Approval | None: ...

    async def get_by_task(self, task_id: str) -> Approval | None: ...

    async def list(
        self,
        *,
        statuses: Collection[ApprovalStatus] | None = None,
        agent: str | None = None,
        tool: str | None = None,
        search: str | None = None,
        limit: int = 100,
        before: datetime | None = None,
        after: ListPosition | None = None,
        with_task: bool = False,
        oldest_first: bool = False,
    ) -> builtins.list[Approval]:
        """Newest first (ties by id), or with `oldest_first` oldest first (ties by id, ascending).
        `search` keeps approvals whose tool or agent contains it (ignoring case) or whose id it
        is (InvalidValue past 200 characters); `before` keeps approvals created before that time;
        `after` continues a listing past the last row of its previous page (in the same order);
        `with_task` keeps only approvals that are MCP tasks."""
        ...

    async def transition(
        self,
        approval_id: str,
        *,
        expected: Collection[ApprovalStatus],
        to: ApprovalStatus,
        changes: Mapping[str, Any] = ...,
        audit: AuditEvent,
    ) -> Approval:
        """Move the approval from one of `expected` to `to`, exactly once across all replicas.

        Raises InvalidTransition (with the fresh row) when the approval is no longer
        in an expected state, ApprovalNotFound, or ValueError when `to` is not
        reachable from every expected state. The audit event is written in the
        same transaction, only by the winner.
        """
        ...

    async def update_fields(
        self, approval_id: str, changes: Mapping[str, Any], *, audit: AuditEvent | None = None
    ) -> Approval:
        """Change bookkeeping fields that carry no state.

        Those are slack_channel, slack_ts, task_id, result_delivered_at, pending_told_at and
        callers; status and decision fields only change through `transition`.
        """
        ...

    async def mark_delivered(
        self, approval_id: str, at: datetime, *, audit: AuditEvent | None = None
    ) -> bool:
        """Record that the outcome reached the agent; True only for the single caller that did it."""
        ...

    async def assign_task(self, approval_id: str, task_id: str) -> Approval:
        """Give the approval a task id unless it has one already; returns the row either way, so
        every task-augmented caller of one approval sees the same task."""
        ...

    async def due_for_expiry(self, now: datetime, *, limit: int = 100) -> builtins.list[Approval]:
        """Pending approvals whose deadline is at or before `now`, oldest deadline first."""
        ...

    async def pending_count(self, *, at_most: int | None = None) -> int:
        """How many approvals are pending; with `at_most`, counting stops past it (returns at_most + 1)."""
        ...

    async def changes_since(self, seq: int | None) -> tuple[int, set[str]]:
        """Approvals with audit events after `seq` (every state change writes one), and the newest
        seq to ask from next time; with None, only the newest seq. One indexed range read however
        many approvals are watched."""
        ...

    async def append_audit(self, event: AuditEvent) -> None:
        """Append an event that accompanies no state change (e.g. ``notified``)."""
        ...

    async def audit_trail(self, approval_id: str) -> builtins.list[AuditRecord]: ...

    async def verify_audit_chain(self, *, expected_head: tuple[int, str] | None = None) -> AuditVerification:
        """Check the chain, that every approval has the events its status implies, and that a head
        recorded earlier (seq, hash) is still part of it."""
        ...

    async def close(self) -> None: ...

    async def probe(self) -> None:
        """One round trip proving the database answers (see broker.approvals.health); raises
        StoreUnavailable when it does not."""
        ...

    async def swap_slack_message(
        self,
        approval_id: str,
        *,
        expected_ts: str | None,
        channel: str | None,
        ts: str | None,
        audit: AuditEvent | None = None,
    ) -> tuple[Approval, bool]:
        """Set slack_channel and slack_ts only if slack_ts is still `expected_ts` (None: unset).

        A compare-and-set across replicas, so that one of them claims a message's post. Returns
        the approval as it now stands and whether this call changed it; `audit` is written in the
        same transaction, only by the winner. Raises ApprovalNotFound.
        """
        ...


class SeenRequests(Protocol):
    """Signed inbound requests already accepted, remembered across replicas until their signature
    expires, so that a captured request replayed inside its validity window is refused everywhere.

    Exception tree::

        StoreUnavailable    the database could not be reached: the caller cannot tell a replay
                            from a first delivery and must refuse the request (fail closed)

    A `digest` is at most 64 characters (a hex SHA-256 of what identifies the request).
    """

    async def first_seen(self, digest: str, expires_at: datetime) -> bool:
        """Record `digest` until `expires_at`; True for exactly one caller across all replicas.

        False when the digest is already recorded (a replay), however many callers race.
        """
        ...


class Cast(NamedTuple):
    """What recording one yes did: the approval as it now stands, whether this person's vote was
    new (False: they had voted already and count once), and whether it reached the quorum (then
    this call, and no other, moved the approval to approved)."""

    approval: Approval
    new: bool
    decided: bool
    grant: Grant | None = None
    """The grant the deciding vote made (broker.approvals.grants), if the counted voters asked for one."""


class VoteStore(Protocol):
    """Yes votes toward a quorum, one per (approval, approver) across all replicas.

    Exception tree (from above)::

        ApprovalNotFound      no approval has that id
        InvalidTransition     the approval is no longer pending (`.current` says who ended it);
                              the vote was not recorded
        └── ArgumentsChanged  the arguments are no longer those the voter saw; not recorded
        StoreUnavailable      nothing was recorded; fail closed
    """

    async def cast(
        self,
        approval_id: str,
        vote: Vote,
        *,
        reason: str | None,
        audit: AuditEvent,
        tally: Callable[[Sequence[Vote]], Tally],
        arguments_hash: str | None = None,
        grant: GrantRequest | None = None,
        make_grant: Callable[[Approval, Tally, Mapping[str, GrantRequest | None]], Grant | None]
        | None = None,
    ) -> Cast:
        """Record `vote` and, when `tally` of every vote stored for the approval is reached, move
        it from pending to approved, all in one transaction that holds the approval's row: of any
        number of last votes racing on any number of replicas exactly one decides, and none is
        lost. `audit` (a ``voted`` event) is written for every vote, repeated ones included; the
        deciding one adds ``approved`` with the counted approvers. With `arguments_hash` (what the
        voter saw) the vote is refused with ArgumentsChanged, nothing recorded, unless the approval
        still has exactly those arguments when its row is held.

        `grant` is the grant this voter asks for, kept with the vote. When the vote decides,
        `make_grant` gets the approved row, the tally and every stored vote's request by approver,
        and the grant it returns is stored (with a ``granted`` event) in the same transaction."""
        ...


class EscalationStore(Protocol):
    """Escalation steps of pending approvals (see broker.approvals.escalation), across replicas.

    Exception tree (from above)::

        ApprovalNotFound      no approval has that id
        StoreUnavailable      nothing was changed; the next sweep tries again
    """

    async def due_for_escalation(self, now: datetime, *, limit: int = 100) -> builtins.list[Approval]:
        """Pending approvals whose next escalation step is due at or before `now`, soonest first."""
        ...

    async def escalate(
        self,
        approval_id: str,
        *,
        step: int,
        now: datetime,
        expires_at: datetime,
        next_escalation_at: datetime | None,
        audit: AuditEvent,
    ) -> tuple[Approval, bool]:
        """Record that the approval reached escalation `step` (counting from 1), with its deadline
        and the time of the step after, only if it is still pending at step - 1 and its deadline
        is after `now`: a compare-and-set, so of any number of replicas exactly one takes a step.
        Returns the approval as it now stands and whether this call took the step; `audit` (an
        ``escalated`` event) is written in the same transaction, only by the winner."""


class GrantNotFound(ApprovalError):
    def __init__(self, grant_id: str) -> None:
        super().__init__(f"no grant with id {grant_id!r}")
        self.grant_id = grant_id


class GrantStore(Protocol):
    """Time-boxed grants (broker.approvals.grants), shared by every replica on the database.

    Exception tree (from above)::

        GrantNotFound         no grant has that id (revoke)
        StoreUnavailable      nothing was read or changed; a call looking for a grant is held
                              (fail closed: a grant never lets a call through unseen)
    """

    async def use(
        self,
        *,
        agent: str,
        server: str,
        tool: str,
        rule: str,
        policy_revision: str,
        arguments_hash: str,
        request_key: str,
        now: datetime,
    ) -> Grant | None:
        """Spend one call of a usable grant for this call, atomically: one statement that adds one
        to ``used_calls`` only while it is below ``max_calls``, the grant unexpired at `now` and not
        revoked, so racing calls on any number of replicas never exceed ``max_calls``. Returns the
        grant after the increment, or None when no grant lets the call through.

        None also while an approval for this exact call (`request_key`) is open, i.e. not cancelled
        and its outcome not yet delivered: the call is then an agent coming back for that outcome
        (or joining that wait), which `ApprovalStore.find_or_create` attaches it to; a grant must
        not run it a second time."""
        ...

    async def give_back(self, grant_id: str) -> None:
        """Undo one `use` whose call the grant did not let through after all (its budget refused
        it, so a human decides): ``used_calls`` goes down by one, never below zero. A grant revoked
        or expired since stays so; one used up becomes usable again if still in time."""
        ...

    async def get(self, grant_id: str) -> Grant | None: ...

    async def list(self, *, active_at: datetime | None = None, limit: int = 100) -> builtins.list[Grant]:
        """Newest first; with `active_at`, only grants still usable then."""
        ...

    async def revoke(self, grant_id: str, *, by: str, at: datetime) -> tuple[Grant, bool]:
        """End the grant now; (grant, True) for the one caller that revoked it, (grant, False) when
        it was revoked already. A ``grant_revoked`` event joins its approval's audit trail."""
        ...
