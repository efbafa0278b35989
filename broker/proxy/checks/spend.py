"""The spend check: a call under ``limits`` reserves its spend before it is forwarded.

Asked by the gateway for an allowed call (after the rate limit), for a call a grant lets through,
and by the releaser for an approved call at release time (a held call reserves when it is
released, not when it is held: what was spent meanwhile counts). A decision without limits costs
nothing here. One ledger round trip (`SpendLedger.reserve`) reserves every limit's share or none.

After forwarding (`settled`):

* a result, ``isError: true`` included, commits: the upstream ran the tool, and the broker cannot
  tell whether a tool that reported an error spent anything, so it counts (fail closed);
* a JSON-RPC error from the upstream, or a call that was never sent (upstream unavailable),
  releases the reservation: the call did not run;
* a call that may have run (connection lost after sending, timeout, malformed answer, the agent
  withdrawing mid-call) commits, for the same reason as ``isError``.

Refusals, each a clear tool error recorded as a decision with outcome ``spend_limited``: the call
would take a window past its limit (which limit, what is left, when the window frees spend); the
amount is missing, not a JSON number, not finite or negative (never a free pass, see
broker/policy/limits.py); the ledger is unreachable (fail closed).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import anyio

from broker.approvals.ports import StoreUnavailable
from broker.approvals.spending import Charge, Reservation, SpendLedger, SpendRefusal
from broker.observability.calls import CallCounts
from broker.policy.amounts import AmountError
from broker.policy.decision import Decision
from broker.policy.limits import UNITS_PER_ONE, SpendLimit
from broker.proxy.call_results import DECISION_META_KEY, error_result
from broker.proxy.checks import JsonObject, PendingCall
from broker.proxy.upstream.base import UpstreamRpcError, UpstreamUnavailable

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SpendBlocked:
    """Why a call was not let through; `text` is what the agent reads."""

    text: str
    retry_at: float | None = None
    budget: bool = False
    """The grant's budget refused the call (not one of the rule's limits): hold it for a human."""


class SpendCheck:
    def __init__(
        self,
        ledger: SpendLedger,
        *,
        clock: Callable[[], float] = time.time,
        ids: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._ids = ids

    async def reserve(
        self,
        decision: Decision,
        *,
        agent: str | None,
        session: str | None,
        tool: str,
        arguments: Mapping[str, object] | None,
        grant: str | None = None,
    ) -> Reservation | SpendBlocked | None:
        """None when the decision has no limits (nor, for a call under grant `grant`, a grant
        budget); else the reservation, or why there is none."""
        limits = decision.limits
        budget = _budget(decision) if grant is not None else None
        if budget is not None:
            limits = (*limits, budget)
        if not limits:
            return None
        now = self._clock()
        charges: list[Charge] = []
        for index, limit in enumerate(limits):
            try:
                units = limit.units(arguments)
            except AmountError as exc:
                return SpendBlocked(
                    f"Not forwarded: '{tool}' is under a spend limit (policy rule {decision.rule}, "
                    f"{limit.describe()}) and {exc}. Send the amount as a number.",
                    budget=limit is budget,
                )
            counter = (
                f"grant|{grant}"
                if limit is budget
                else limit.counter_key(agent=agent, session=session, tool=tool)
            )
            charges.append(
                Charge(
                    counter=counter,
                    units=units,
                    ceiling=limit.ceiling_units,
                    since=0.0 if limit is budget else limit.window_start(now),
                    limit=index,
                )
            )
        try:
            outcome = await self._ledger.reserve(self._ids(), charges, now)
        except (StoreUnavailable, ValueError) as exc:
            logger.error("spend ledger failed; refusing spend-limited calls: %s", exc)
            return SpendBlocked(
                f"Not forwarded: '{tool}' is under a spend limit (policy rule {decision.rule}) and the "
                f"broker cannot count spend right now ({exc}). It refuses such calls until it can "
                "(fails closed). Retry later."
            )
        if isinstance(outcome, SpendRefusal):
            return _over_limit(tool, decision, limits, outcome, now, budget is not None)
        return outcome

    @asynccontextmanager
    async def settled(self, reservation: Reservation | None) -> AsyncIterator[None]:
        """Commits or releases `reservation` by how the forward inside the block ended."""
        if reservation is None:
            yield
            return
        try:
            yield
        except (UpstreamRpcError, UpstreamUnavailable):
            await self._settle(reservation, commit=False)
            raise
        except BaseException:
            await self._settle(reservation, commit=True)
            raise
        await self._settle(reservation, commit=True)

    async def _settle(self, reservation: Reservation, *, commit: bool) -> None:
        # Shielded: a withdrawn call still settles what it reserved.
        with anyio.CancelScope(shield=True):
            try:
                if commit:
                    await self._ledger.commit(reservation)
                else:
                    await self._ledger.release(reservation)
            except (StoreUnavailable, OSError) as exc:
                logger.error(
                    "could not %s spend reservation %s: %s",
                    "commit" if commit else "release",
                    reservation.id,
                    exc,
                )


async def reserve_or_refuse(
    spend: SpendCheck | None,
    call: PendingCall,
    *,
    counts: CallCounts,
    record: Callable[[PendingCall, str], str],
    grant: str | None = None,
) -> Reservation | JsonObject | SpendBlocked | None:
    """For the gateway: the call's reservation (None: no limits), or the tool error that ends it,
    counted and recorded as ``spend_limited``. Without a ledger a limited call is refused. For a
    call under `grant` whose budget refuses it: the SpendBlocked (the gateway holds the call)."""
    if not call.decision.limits and (grant is None or _budget(call.decision) is None):
        return None
    if spend is None:
        # Fail closed: limits nobody can count are limits nobody may pass.
        outcome: Reservation | SpendBlocked | None = SpendBlocked(
            f"Not forwarded: '{call.tool.exposed_name}' is under a spend limit (policy rule "
            f"{call.decision.rule}) and this broker has no spend ledger."
        )
    else:
        outcome = await spend.reserve(
            call.decision,
            agent=call.agent,
            session=call.session,
            tool=call.tool.exposed_name,
            arguments=call.arguments,
            grant=grant,
        )
    if not isinstance(outcome, SpendBlocked) or outcome.budget:
        return outcome
    counts.spend_limited += 1
    result = error_result(outcome.text, call.decision, record(call, "spend_limited"))
    if outcome.retry_at is not None:
        result["_meta"][DECISION_META_KEY]["retryAt"] = outcome.retry_at
    return result


def _budget(decision: Decision) -> SpendLimit | None:
    allowance = decision.approval.grant if decision.approval is not None else None
    return allowance.budget if allowance is not None else None


def _over_limit(
    tool: str,
    decision: Decision,
    limits: tuple[SpendLimit, ...],
    refusal: SpendRefusal,
    now: float,
    has_budget: bool,
) -> SpendBlocked:
    limit = limits[refusal.charge.limit]
    if has_budget and refusal.charge.limit == len(limits) - 1:
        return SpendBlocked(
            f"the grant's budget ({limit.describe().split(' per ')[0]}) has "
            f"{_amount(refusal.remaining, limit)} left, and this call would spend "
            f"{_amount(refusal.charge.units, limit)}",
            budget=True,
        )
    frees = limit.calendar_end(now)
    if frees is None and refusal.oldest is not None:
        frees = refusal.oldest + limit.window_seconds
    when = f"; spend starts leaving the window at {_iso(frees)}" if frees is not None else ""
    reason = f" ({limit.reason})" if limit.reason else ""
    if limit.inclusive:
        room = f"only {_amount(refusal.remaining, limit)} left of"
    else:
        room = f"{_amount(refusal.spent, limit)} already spent, and the window must stay under its limit:"
    return SpendBlocked(
        f"Spend limit reached: the call to '{tool}' would spend {_amount(refusal.charge.units, limit)} "
        f"with {room} {limit.describe()} (policy rule {decision.rule}){reason}{when}. Not forwarded.",
        frees,
    )


def _amount(units: int, limit: SpendLimit) -> str:
    value = (Decimal(units) / UNITS_PER_ONE).normalize()
    text = f"{value:f}"
    return (
        f"{text} {'call' if value == 1 else 'calls'}"
        if limit.amount is None and limit.increment == 1
        else text
    )


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
