"""The grant check: a call the policy holds may pass without a prompt under a time-boxed grant.

Asked by the gateway only for a call whose decision is require_approval by a rule with a ``grant``
setting, after the rate limit let it through (a grant never overrides deny, hide or a rate limit,
and an allowed call never comes here: its cost is unchanged). One store round trip
(`GrantStore.use`, a compare-and-increment) looks for a usable grant of this agent for this
upstream tool, made under this very rule and policy revision, identical arguments or matching.
A call whose exact twin has an open approval (the agent coming back for a held call's outcome,
the pending/re-call path) never uses a grant: it goes on to that approval.

Fail closed: a store failure, or arguments that have no canonical hash, mean "no grant": the call
is held as usual (and the hold reports the store being down).

Time comes from the injected clock, so tests move it instead of sleeping (expiry is compared in
the database against that time).
"""

from __future__ import annotations

import logging
from typing import Any

from broker.approvals.canonical import arguments_hash, request_key
from broker.approvals.clock import Clock, utc_now
from broker.approvals.grants import Grant
from broker.approvals.ports import GrantStore, StoreUnavailable
from broker.policy.decision import Action, Decision

logger = logging.getLogger(__name__)


class GrantCheck:
    def __init__(self, store: GrantStore, *, clock: Clock = utc_now) -> None:
        self._store = store
        self._clock = clock

    @staticmethod
    def applies(decision: Decision) -> bool:
        """Whether a grant could exist for calls decided like this (no store round trip otherwise)."""
        return (
            decision.action is Action.REQUIRE_APPROVAL
            and decision.approval is not None
            and decision.approval.grant is not None
        )

    async def use(
        self, agent: str, server: str, tool: str, exposed: str, arguments: dict[str, Any], decision: Decision
    ) -> Grant | None:
        """The grant this call spends one use of, or None: then the call is held."""
        if not self.applies(decision):
            return None
        try:
            digest = arguments_hash(arguments)
        except ValueError:
            return None
        try:
            return await self._store.use(
                agent=agent,
                server=server,
                tool=tool,
                rule=decision.rule,
                policy_revision=decision.revision,
                arguments_hash=digest,
                request_key=request_key(agent, exposed, digest),
                now=self._clock(),
            )
        except StoreUnavailable as exc:
            logger.warning("no grant looked up for %s (store unavailable: %s); the call is held", tool, exc)
            return None

    async def give_back(self, grant: Grant) -> None:
        """The grant's budget refused the call `use` counted: the use is undone, so the count says
        how many calls the grant let through. A store failure leaves it counted (never more calls
        than `max_calls` either way), logged."""
        try:
            await self._store.give_back(grant.id)
        except StoreUnavailable as exc:
            logger.warning("grant %s keeps a use its budget refused (store unavailable: %s)", grant.id, exc)
