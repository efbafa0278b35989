"""What spend limits need from storage: a ledger that reserves, commits and releases spend.

A call under ``limits`` (broker/policy/limits.py) becomes one `Charge` per limit: a counter key,
the units this call spends, the most units the window may hold, and where the window starts. The
gateway reserves them all before forwarding, commits on success and releases on an upstream error::

    outcome = await ledger.reserve(reservation_id, charges, now)   # Reservation | SpendRefusal
    ...forward...
    await ledger.commit(outcome)    # or: await ledger.release(outcome)

`reserve` is all or nothing and exact under concurrency: however many calls race on however many
replicas, the units counted in a window never exceed a charge's ceiling. What counts is every
committed entry and every reservation still in its lease, at or after the charge's ``since``.
A reservation that is neither committed nor released (the broker was killed mid-call) stops
counting when its lease runs out, so a crash does not eat budget forever; committing it later
(a slow upstream) makes it count again. Committed spend counts until it leaves the window.

Exception tree::

    StoreUnavailable   (broker.approvals.ports) the ledger could not be reached or failed
                       mid-operation; the caller must fail closed: refuse the call, never forward
                       it uncounted. From commit/release: the entry stays reserved until its lease
                       runs out (release) or the spend may be missed (commit): logged, not raised
                       to the agent, whose call already happened.

Programming errors (an empty charge list, a non-positive lease) raise ValueError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

DEFAULT_LEASE_SECONDS = 3600.0
"""How long a reservation counts without being committed (longer than any upstream call should take)."""


@dataclass(frozen=True, slots=True)
class Charge:
    """One limit's share of one call."""

    counter: str
    """The counter key (`SpendLimit.counter_key`): limits naming the same counter share its entries."""
    units: int
    ceiling: int
    """The most units the window may hold, this call included."""
    since: float
    """Entries at or after this instant (seconds since the epoch) count."""
    limit: int = 0
    """Which of the decision's limits this charge is for (its index), for the refusal."""


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    charges: tuple[Charge, ...]
    at: float


@dataclass(frozen=True, slots=True)
class SpendRefusal:
    """The first charge that did not fit: what its window already holds."""

    charge: Charge
    spent: int
    """Units counted in the window before this call."""
    oldest: float | None
    """When the oldest counted entry was made (None: none), for "frees from" in sliding windows."""

    @property
    def remaining(self) -> int:
        return max(self.charge.ceiling - self.spent, 0)


class SpendLedger(Protocol):
    async def reserve(
        self, reservation_id: str, charges: Sequence[Charge], now: float
    ) -> Reservation | SpendRefusal:
        """Count every charge or none; raises StoreUnavailable."""
        ...

    async def commit(self, reservation: Reservation) -> None:
        """The call went through: its spend counts until it leaves the window."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """The call did not happen: give the reserved units back."""
        ...


def check_charges(charges: Sequence[Charge]) -> None:
    if not charges:
        raise ValueError("a reservation needs at least one charge")
    for charge in charges:
        if charge.units < 0:
            raise ValueError(f"a charge cannot be negative: {charge}")


def first_refusal(
    charges: Sequence[Charge], totals: dict[tuple[str, float], tuple[int, float | None]]
) -> SpendRefusal | None:
    """The first charge over its ceiling, given each (counter, since)'s counted units and oldest entry.

    Charges on the same counter in one call add up: two limits sharing a counter see this call once
    each, so each checks the existing total plus this call's units for that limit.
    """
    for charge in charges:
        spent, oldest = totals.get((charge.counter, charge.since), (0, None))
        if spent + charge.units > charge.ceiling:
            return SpendRefusal(charge, spent, oldest)
    return None
