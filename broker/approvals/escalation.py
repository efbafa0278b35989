"""Escalation: who is asked next when nobody has decided a held call (the sweep step ``escalate``).

A require_approval rule may name steps (broker.policy.escalation); the call keeps them from the
moment it is held, so a policy reload does not change the plan of a call already waiting. Each
step is due ``after`` its time from the hold (``Approval.next_escalation_at``). Reaching step k:

* adds the step's ``to`` to the people who may decide (broker.approvals.eligibility: the rule's
  approvers, then those of steps 1..k; they count toward a quorum like any approver);
* keeps the deadline, or moves it later by the step's ``extend``;
* writes one ``escalated`` audit event (step, added approvers, channels, deadline);
* tells the escalation listeners (a new Slack post in the step's channels, a metric) and the
  approval listeners (the original message says it was escalated, the inbox marks it).

Exactly one replica takes each step: the store's compare-and-set is on (pending, step k - 1,
deadline not passed), and only the winner announces, so a step is posted once. A sweep that comes
late takes every step that is due, one after another, each with its own event. A call whose
deadline passed is expired by the step before (``expire``) and never escalated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.model import Approval
from broker.approvals.ports import EscalationStore
from broker.policy.escalation import EscalationStep

ESCALATION_ACTOR = "escalation"
PAGE = 100


@dataclass(frozen=True, slots=True)
class Escalated:
    """One step taken: the approval as it now stands and the step it reached (`number` from 1)."""

    approval: Approval
    number: int

    @property
    def step(self) -> EscalationStep:
        return self.approval.escalation[self.number - 1]


class EscalationListener(Protocol):
    """Hears the steps this replica took (never another replica's: each step is told once)."""

    async def approval_escalated(self, escalated: Escalated) -> None: ...


def next_step(approval: Approval) -> tuple[int, EscalationStep] | None:
    number = approval.escalation_step + 1
    if number > len(approval.escalation):
        return None
    return number, approval.escalation[number - 1]


async def escalate_due(store: EscalationStore, now: datetime, *, replica: str) -> list[Escalated]:
    """Takes every step due at `now` that no other replica took first; returns those taken here."""
    taken: list[Escalated] = []
    while True:
        progressed = False
        for approval in await store.due_for_escalation(now, limit=PAGE):
            upcoming = next_step(approval)
            if upcoming is None:
                continue
            number, step = upcoming
            extend = timedelta(seconds=step.extend_seconds or 0.0)
            expires_at = approval.expires_at + extend
            later = approval.escalation[number:]
            next_at = approval.created_at + timedelta(seconds=later[0].after_seconds) if later else None
            details = {
                "step": number,
                "added_approvers": list(step.to),
                "channels": list(step.channels),
                "expires_at": expires_at.isoformat(),
                "deadline_extended": bool(extend),
                "replica": replica,
            }
            escalated, won = await store.escalate(
                approval.id,
                step=number,
                now=now,
                expires_at=expires_at,
                next_escalation_at=next_at,
                audit=AuditEvent(AuditEventKind.ESCALATED, ESCALATION_ACTOR, details),
            )
            if won:
                taken.append(Escalated(escalated, number))
                progressed = True
        # Another round only after a step was taken: a late sweep takes the next due step of the
        # same call; rows another replica is stepping (or expiry owns) end the loop.
        if not progressed:
            return taken


def escalation_text(approval: Approval) -> str | None:
    """ "escalated to @oncall-leads, carol" once a step with approvers was reached, else None."""
    if approval.escalation_step == 0:
        return None
    added = approval.escalated_to
    if added:
        return f"escalated to {', '.join(added)}"
    return f"escalated (step {approval.escalation_step})"
