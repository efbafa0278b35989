"""The catalogue's risk rating of each upstream tool, for the policy's ``risk_defaults``.

A tool is classified (broker.catalogue.classify_tool, a few dozen regex scans of its
definition) the first time a call or a listing needs its rating, and the rating is kept
until the upstream tool lists change (`clear`, called from `Gateway.tools_changed`), so an
upstream that rewrites a description to look harmless is re-rated from what it says now.
A call costs one dict lookup, and only under a policy with ``risk_defaults``
(`Policy.rates_risk`): other policies never ask. A definition the catalogue cannot read is
rated critical: unknown effects are not assumed harmless.
"""

from __future__ import annotations

from typing import Final

from broker.catalogue import ToolDefinitionError, classify_tool
from broker.proxy.upstream.pool import UpstreamTool

UNREADABLE_RISK: Final = "critical"


class ToolRisks:
    __slots__ = ("_ratings",)

    def __init__(self) -> None:
        self._ratings: dict[tuple[str, str], str] = {}

    def of(self, tool: UpstreamTool) -> str:
        key = (tool.server, tool.name)
        rating = self._ratings.get(key)
        if rating is None:
            try:
                # Classified by the name the upstream gave it: the server prefix is no evidence.
                rating = classify_tool({**tool.definition, "name": tool.name}, tool.server).risk.value
            except ToolDefinitionError:
                rating = UNREADABLE_RISK
            self._ratings[key] = rating
        return rating

    def clear(self) -> None:
        self._ratings.clear()
