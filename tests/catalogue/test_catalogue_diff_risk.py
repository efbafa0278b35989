"""`broker policy diff` with ``risk_defaults``: tools no rule names are compared under the default for their rating."""

from __future__ import annotations

from broker.catalogue import CatalogueTool, classify_tool, diff_policies, render_diff
from broker.policy import Action, load_policy

WITHDRAW = {
    "name": "withdraw",
    "description": "Withdraw funds to an external address. Irreversible.",
    "inputSchema": {
        "type": "object",
        "properties": {"amount": {"type": "string"}, "address": {"type": "string"}},
    },
    "annotations": {"readOnlyHint": True},
}
TOOLS = [
    CatalogueTool(
        "exchange", "get_ticker", "get_ticker", {"name": "get_ticker", "description": "Latest price."}
    ),
    CatalogueTool("exchange", "withdraw", "withdraw", WITHDRAW),
]
OPEN = 'version: "1"\ndefault: allow\n'
RISKY = OPEN + "risk_defaults:\n  critical: require_approval\n"


def test_adding_risk_defaults_reports_the_tools_it_holds_and_names_the_default() -> None:
    assert classify_tool(WITHDRAW, "exchange").risk.value == "critical"
    changes = diff_policies(load_policy(OPEN), load_policy(RISKY), TOOLS)

    assert [change.tool.name for change in changes] == ["withdraw"]
    after = changes[0].new.otherwise
    assert after.action is Action.REQUIRE_APPROVAL
    assert after.rule == "default (risk: critical \u2192 require_approval)"
    assert "default (risk: critical \u2192 require_approval)" in render_diff(changes)


def test_the_same_risk_defaults_on_both_sides_is_no_change() -> None:
    assert diff_policies(load_policy(RISKY), load_policy(RISKY + "hide: []\n"), TOOLS) == []
