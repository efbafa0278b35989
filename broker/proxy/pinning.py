"""Holding calls to tools whose definition changed since an operator accepted it.

`PinGuard.refresh(tools)` runs off the hot path, at start and whenever an upstream's tool list
changes: it records every listed tool's definition hash in the shared `PinStore`
(broker.catalogue.pins). Every `POLL_SECONDS` it re-reads the pins only (one query), to see
acceptances made on other replicas or with ``broker tools accept``. It keeps the exposed
names of tools whose current definition is not accepted in a frozenset. A changed definition is logged
(old and new hash) and recorded as a ``changed`` tool event by the store (broker.catalogue.tool_events).

On the hot path the gateway asks `override(tool, decision)`: one frozenset lookup by exposed
name when something is pending, nothing else. A pending tool's calls that the policy would let
through (allow or require_approval) get the policy's ``on_definition_change`` action instead:
``require_approval`` (the default) holds each call for a human, keeping the rule's approval
settings when the rule already held it; ``hide`` drops the tool from ``tools/list`` and
refuses its calls. A tool no one accepted yet (strict pinning: the policy's ``on_new_tool`` is
``require_approval`` or ``hide``, and new tools are recorded unaccepted) gets ``on_new_tool`` the
same way, under rule `NEW_PIN_RULE`. Denied and hidden calls stay as they are. While the store cannot be read,
every listed tool counts as pending (fail closed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final

from broker.approvals.ports import StoreUnavailable
from broker.catalogue.pins import PinStore, definition_hash
from broker.policy.decision import Action, ApprovalRequirement, Decision
from broker.proxy.upstream.pool import UpstreamTool

logger = logging.getLogger(__name__)

POLL_SECONDS: Final = 5.0
PIN_RULE: Final = "pin (definition changed)"
NEW_PIN_RULE: Final = "pin (new tool)"


class PinGuard:
    def __init__(
        self,
        store: PinStore,
        *,
        clock: Callable[[], datetime],
        trust_new: bool | Callable[[], bool] = True,
    ) -> None:
        """`trust_new` may be read anew at each refresh (the current policy's ``on_new_tool``)."""
        self._store = store
        self._clock = clock
        self._trust_new = trust_new if callable(trust_new) else (lambda: trust_new)
        self.pending: frozenset[str] = frozenset()
        self.never_accepted: frozenset[str] = frozenset()
        """The pending tools no one ever accepted (a subset of `pending`)."""
        # Keyed by the policy's decision object (built once per policy load) and kept beside it,
        # so an id reused after a reload can never match.
        self._overrides: dict[tuple[int, Action, bool], tuple[Decision, Decision]] = {}

    async def refresh(self, tools: Sequence[UpstreamTool], *, record: bool = True) -> bool:
        """Records the definitions offered now (unless `record` is False: the poll only reads what
        other replicas and the CLI wrote); returns True when the pending set changed."""
        listed = {(tool.server, tool.name): tool.exposed_name for tool in tools}
        trust_new = self._trust_new()
        never_accepted: frozenset[str] = frozenset()
        try:
            for tool in tools if record else ():
                try:
                    seen = definition_hash(tool.definition)
                except ValueError:
                    seen = "unreadable"  # never equal to an accepted hash: the tool stays pending
                sighting = await self._store.observe(
                    tool.server,
                    tool.name,
                    seen,
                    now=self._clock(),
                    trust_new=trust_new,
                    definition=tool.definition,
                )
                if sighting.changed and sighting.before is not None:
                    logger.warning(
                        "tool definition changed: %s on %s (%s -> %s); pending until `broker tools accept`",
                        tool.name,
                        tool.server,
                        sighting.before.seen_hash[:12],
                        sighting.pin.seen_hash[:12],
                    )
            pins = await self._store.pins()
            pending = frozenset(
                listed[(pin.server, pin.tool)]
                for pin in pins
                if pin.pending and (pin.server, pin.tool) in listed
            )
            never_accepted = frozenset(
                listed[(pin.server, pin.tool)]
                for pin in pins
                if pin.accepted_hash is None and (pin.server, pin.tool) in listed
            )
        except StoreUnavailable:
            pending = frozenset(listed.values())
        changed = pending != self.pending or never_accepted != self.never_accepted
        self.pending = pending
        self.never_accepted = never_accepted
        return changed

    def _action(self, tool: UpstreamTool, on_change: Action, on_new: Action | None) -> tuple[Action, bool]:
        """The action for a pending tool, and whether it is pending because no one ever accepted it."""
        if on_new is not None and tool.exposed_name in self.never_accepted:
            return on_new, True
        return on_change, False

    def hides(self, tool: UpstreamTool, on_change: Action, on_new: Action | None = None) -> bool:
        """Whether `tool.exposed_name` leaves ``tools/list`` (pending, and the action is ``hide``)."""
        return tool.exposed_name in self.pending and self._action(tool, on_change, on_new)[0] is Action.HIDE

    def override(
        self, tool: UpstreamTool, decision: Decision, on_change: Action, on_new: Action | None = None
    ) -> Decision | None:
        """The decision for a call to a pending tool, or None when `tool` is not pending."""
        if tool.exposed_name not in self.pending:
            return None
        if not (decision.forwards or decision.action is Action.REQUIRE_APPROVAL):
            return None
        action, new = self._action(tool, on_change, on_new)
        key = (id(decision), action, new)
        cached = self._overrides.get(key)
        if cached is not None and cached[0] is decision:
            return cached[1]
        if len(self._overrides) > 1024:
            self._overrides.clear()
        held = decision.approval if decision.approval is not None else ApprovalRequirement()
        found = Decision(
            action,
            NEW_PIN_RULE if new else PIN_RULE,
            f"the tool is new and no one accepted its definition yet (policy rule {decision.rule} "
            "applies once accepted); accept it with `broker tools accept`"
            if new
            else f"the tool's definition changed since it was accepted (policy rule {decision.rule} "
            "applies to the old one); accept it with `broker tools accept`",
            decision.revision,
            rate_limit=decision.rate_limit,
            approval=held if action is Action.REQUIRE_APPROVAL else None,
        )
        self._overrides[key] = (decision, found)
        return found
