"""The approval state machine as data, plus the check every writer runs before touching the store."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from broker.approvals.model import ApprovalStatus

_S = ApprovalStatus

ALLOWED_TRANSITIONS: Mapping[ApprovalStatus, frozenset[ApprovalStatus]] = {
    _S.PENDING: frozenset({_S.APPROVED, _S.DENIED, _S.EXPIRED, _S.CANCELLED}),
    # approved -> cancelled is deliberately absent: once a human said yes the release
    # goes ahead (another replica may already be forwarding it), so it can only finish.
    _S.APPROVED: frozenset({_S.RELEASED}),
    # failed: the call never ran; outcome_unknown: it was sent and no answer came back.
    _S.RELEASED: frozenset({_S.COMPLETED, _S.FAILED, _S.OUTCOME_UNKNOWN}),
    _S.COMPLETED: frozenset(),
    _S.FAILED: frozenset(),
    _S.DENIED: frozenset(),
    _S.EXPIRED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.OUTCOME_UNKNOWN: frozenset(),
}

CREATION_STATES: frozenset[ApprovalStatus] = frozenset({_S.PENDING, _S.APPROVED})
"""What an approval may be when it comes into existence. Approved: a call a grant let through that
is still tracked as an approval (its task is served from it) is created decided, in the same
transaction, so no channel, replica or person ever sees it pending (broker.approvals.deciding)."""


def is_allowed(source: ApprovalStatus, target: ApprovalStatus) -> bool:
    return target in ALLOWED_TRANSITIONS[source]


def check_transition(expected: Collection[ApprovalStatus], to: ApprovalStatus) -> frozenset[ApprovalStatus]:
    """Validate a compare-and-set request and return the expected states as a set.

    Asking to move to `to` from a state that can never reach it is a bug in the
    caller, not a race, so it raises ValueError rather than InvalidTransition.
    """
    statuses = frozenset(ApprovalStatus(status) for status in expected)
    if not statuses:
        raise ValueError("a transition needs at least one expected status")
    unreachable = sorted(status.value for status in statuses if not is_allowed(status, to))
    if unreachable:
        raise ValueError(f"{to.value!r} is not reachable from {', '.join(repr(s) for s in unreachable)}")
    return statuses


def check_creation(status: ApprovalStatus) -> ApprovalStatus:
    """The state to create an approval in; any other than CREATION_STATES is a bug (ValueError)."""
    status = ApprovalStatus(status)
    if status not in CREATION_STATES:
        raise ValueError(f"an approval cannot be created {status.value!r}")
    return status
