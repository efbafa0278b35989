"""The posts an escalation step owes, kept so that any replica can make one another replica did not.

Which posts a step owes is derivable from the approval row alone: steps 1..``escalation_step``
were taken (in the same transaction as their ``escalated`` event, broker.store.escalations), and
each step names its channels. What is not derivable is whether a post was made. That is one row per
(approval, step, channel) in the store (`EscalationPostStore`), written by the channel that posts:

* a writer *claims* the post before making it: a row that did not exist, or one whose claim lapsed
  (its writer died) and that has no outcome yet; one compare-and-set, so of any number of replicas
  exactly one holds the claim at a time, and a writer renews its own claim between retries;
* once the channel answered, the writer *settles* the row with the outcome (``posted`` with where,
  ``refused``, or ``skipped`` when the call was decided before the post could be made); a settled
  row is never claimed again.

The replica that took the step claims and posts at once. Should it die between the step's commit
and the post, the reconcilers of the other replicas find the step's posts missing (no row, or a
lapsed claim) while the call still waits, and one of them makes each. A writer that dies after the
channel accepted a post and before settling it leaves a lapsed claim: that one post may then be made
twice (as for approval messages, the channel cannot be asked whether a post it never confirmed was
made).

Exception tree: only StoreUnavailable (broker.approvals.ports), from every method.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class PostOutcome(enum.StrEnum):
    POSTED = "posted"
    REFUSED = "refused"
    """The channel refused the post for good (e.g. the bot is not in the channel)."""
    SKIPPED = "skipped"
    """The call was decided before the post was made: its original message tells the outcome."""


@dataclass(frozen=True, slots=True)
class EscalationPost:
    approval_id: str
    step: int
    channel: str
    writer: str
    claimed_until: datetime
    outcome: PostOutcome | None = None
    ts: str | None = None
    """Where the channel put it (a Slack message ts), once posted."""

    def open_at(self, now: datetime) -> bool:
        """Whether another writer may claim it at `now`: unsettled and its claim lapsed."""
        return self.outcome is None and self.claimed_until <= now


class EscalationPostStore(Protocol):
    async def claim(
        self, approval_id: str, step: int, channel: str, *, writer: str, now: datetime, until: datetime
    ) -> bool:
        """Takes (or renews) the claim on one post until `until`; True for the one writer that
        holds it: no row yet, or an unsettled row whose claim is this writer's or lapsed at `now`."""
        ...

    async def settle(
        self, approval_id: str, step: int, channel: str, *, writer: str, outcome: PostOutcome, ts: str | None
    ) -> bool:
        """Records the outcome; False when `writer` no longer held the claim (another writer took it
        over after it lapsed, and the outcome is theirs to record)."""
        ...

    async def of(self, approval_ids: Collection[str]) -> builtins.list[EscalationPost]:
        """Every row of these approvals."""
        ...


def owed(
    taken: Iterable[tuple[str, int, str]], rows: Iterable[EscalationPost], now: datetime
) -> list[tuple[str, int, str]]:
    """Of the (approval, step, channel) posts the steps taken call for, those still to make: with
    no row, or an unsettled row whose claim lapsed at `now`."""
    known = {(row.approval_id, row.step, row.channel): row for row in rows}
    missing: list[tuple[str, int, str]] = []
    for key in taken:
        row = known.get(key)
        if row is None or row.open_at(now):
            missing.append(key)
    return missing
