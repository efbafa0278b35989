"""The broker's `CallContexts`: a held call's view with the tool's description and rating, who
waits for the answer, and the last decisions on the same tool and agent.

Tool facts come from the upstreams' current ``tools/list`` and are rated by the catalogue
(`broker.catalogue.classify_tool`); a rating is computed once per tool definition and reused
until the upstream sends a new list. A tool the upstream no longer lists is shown as such, never
guessed. Descriptions come from upstreams, which are not trusted: they are clipped here and
escaped by every surface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from broker.approvals.call_view import (
    RECENT_DECISIONS,
    RECENT_STATUSES,
    CallContext,
    CallView,
    ToolFacts,
    Waiting,
    call_view,
    recent_decisions,
)
from broker.approvals.model import Approval
from broker.approvals.ports import ApprovalStore
from broker.catalogue import CatalogueError, classify_tool
from broker.policy import Policy
from broker.proxy.upstream.pool import UpstreamTool

DESCRIPTION_LIMIT: Final = 2000
UNLISTED: Final = ToolFacts(listed=False)


class CallContextSource:
    """Implements `broker.approvals.call_view.CallContexts` over the running broker's parts."""

    def __init__(
        self,
        *,
        store: ApprovalStore,
        policy: Callable[[], Policy],
        tools: Callable[[], Sequence[UpstreamTool]],
        held_here: Callable[[str], int],
    ) -> None:
        self._store = store
        self._policy = policy
        self._tools = tools
        self._held_here = held_here
        self._indexed: Sequence[UpstreamTool] | None = None
        self._by_name: dict[tuple[str, str], UpstreamTool] = {}
        self._facts: dict[tuple[str, str], ToolFacts] = {}

    def view(self, approval: Approval) -> CallView:
        return call_view(approval, self._policy())

    def tool(self, server: str, upstream_tool: str) -> ToolFacts:
        tools = self._tools()
        if tools is not self._indexed:
            # The pool hands out a new tuple whenever a tools/list changes: rate tools afresh.
            self._by_name = {(tool.server, tool.name): tool for tool in tools}
            self._facts = {}
            self._indexed = tools
        key = (server, upstream_tool)
        facts = self._facts.get(key)
        if facts is None:
            found = self._by_name.get(key)
            facts = _facts(found) if found is not None else UNLISTED
            self._facts[key] = facts
        return facts

    async def context(self, approval: Approval, *, recent: bool = True) -> CallContext:
        earlier: tuple[Approval, ...] = ()
        if recent:
            candidates = await self._store.list(
                agent=approval.agent, tool=approval.tool, statuses=RECENT_STATUSES, limit=RECENT_DECISIONS + 1
            )
            earlier = recent_decisions(approval, candidates)
        return CallContext(
            view=self.view(approval),
            tool=self.tool(approval.server, approval.upstream_tool),
            waiting=Waiting(approval.callers, self._held_here(approval.id), approval.pending_told_at),
            recent=earlier,
        )


def _facts(tool: UpstreamTool) -> ToolFacts:
    definition = tool.definition
    description = definition.get("description")
    title = definition.get("title")
    text = description.strip()[:DESCRIPTION_LIMIT] if isinstance(description, str) else None
    try:
        rating = classify_tool({**definition, "name": tool.name}, tool.server)
    except CatalogueError:
        return ToolFacts(listed=True, title=_text(title), description=text or None)
    return ToolFacts(
        listed=True,
        title=_text(title),
        description=text or None,
        category=rating.category.value,
        risk=rating.risk.value,
        reasons=rating.reasons,
    )


def _text(value: object) -> str | None:
    return value.strip()[:200] or None if isinstance(value, str) else None
