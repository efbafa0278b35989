from __future__ import annotations

import json

from broker.catalogue import CatalogueTool, DecisionChange, diff_policies, render_diff
from broker.policy import Action, load_policy

OLD = """
version: "1"
default: deny
rules:
  - tool: "get_*"
    action: allow
    rate_limit: {max: 60, window: 60}
  - tool: "exchange__place_order"
    action: require_approval
    timeout: 300
  - tool: "exchange__cancel_order"
    action: require_approval
  - tool: "withdraw"
    action: require_approval
  - tool: "send_email"
    action: allow
"""

NEW = """
version: "1"
default: deny
hide: ["send_email"]
rules:
  - tool: "get_*"
    action: allow
    rate_limit: {max: 60, window: 60}
  - tool: "get_balance"
    action: allow
    rate_limit: {max: 60, window: 60}
  - tool: "exchange__place_order"
    action: allow
    rate_limit: {max: 10, window: 60}
  - tool: "exchange__cancel_order"
    action: require_approval
    timeout: 60
  - tool: "get_ticker"
    action: allow
    rate_limit: {max: 5, window: 1m}
  - tool: "withdraw"
    action: deny
"""

TOOLS = [
    CatalogueTool("exchange", name, f"exchange__{name}", {"name": name})
    for name in (
        "get_ticker",
        "get_balance",
        "get_orders",
        "place_order",
        "cancel_order",
        "withdraw",
        "send_email",
    )
]


def changes_by_tool(changes: list[DecisionChange]) -> dict[str, DecisionChange]:
    return {change.tool.name: change for change in changes}


def test_changed_tools_are_reported_and_unchanged_ones_omitted() -> None:
    changes = changes_by_tool(diff_policies(load_policy(OLD), load_policy(NEW), TOOLS))

    assert set(changes) == {
        "get_ticker",
        "get_balance",
        "place_order",
        "cancel_order",
        "withdraw",
        "send_email",
    }
    assert changes["get_ticker"].changed == ("rule", "rate_limit")
    assert changes["get_balance"].changed == ("rule",)
    assert changes["place_order"].changed == ("action", "rate_limit", "approval")
    assert changes["cancel_order"].changed == ("approval",)
    assert changes["withdraw"].changed == ("listed", "action", "approval")
    assert changes["send_email"].changed == ("listed", "action", "rule")


def test_a_rule_that_only_moved_is_not_a_change() -> None:
    moved = OLD.replace("rules:\n", 'rules:\n  - tool: "unrelated"\n    action: allow\n')

    assert diff_policies(load_policy(OLD), load_policy(moved), TOOLS) == []


def test_rules_with_ids_are_compared_by_id() -> None:
    old = 'version: "1"\nrules:\n  - {id: reads, tool: "get_*", action: allow}\n'
    renamed_pattern = 'version: "1"\nrules:\n  - {id: reads, tool: "get_[bo]*", action: allow}\n'
    renamed = 'version: "1"\nrules:\n  - {id: queries, tool: "get_*", action: allow}\n'
    other_rule = 'version: "1"\nrules:\n  - {id: queries, tool: "get_[bo]*", action: allow}\n'
    tools = [tool for tool in TOOLS if tool.name == "get_balance"]

    assert diff_policies(load_policy(old), load_policy(renamed_pattern), tools) == []
    # A renamed rule (same pattern, scope and conditions) decides as before
    assert diff_policies(load_policy(old), load_policy(renamed), tools) == []
    assert [change.changed for change in diff_policies(load_policy(old), load_policy(other_rule), tools)] == [
        ("rule",)
    ]


def test_before_and_after_carry_the_decision() -> None:
    change = changes_by_tool(diff_policies(load_policy(OLD), load_policy(NEW), TOOLS))["withdraw"]

    assert (change.old.listed, change.old.action, change.old.rule) == (
        True,
        Action.REQUIRE_APPROVAL,
        "rules[3] 'withdraw'",
    )
    assert (change.new.listed, change.new.action, change.new.rule) == (
        False,
        Action.DENY,
        "rules[5] 'withdraw'",
    )


def test_identical_policies_have_no_changes() -> None:
    assert (
        diff_policies(load_policy(OLD), load_policy(OLD + "\n# a comment changes the revision\n"), TOOLS)
        == []
    )
    assert render_diff([]) == "No tool decisions change, for any agent or arguments.\n"


def test_changes_are_sorted_by_exposed_name() -> None:
    changes = diff_policies(load_policy(OLD), load_policy(NEW), list(reversed(TOOLS)))

    assert [change.tool.exposed_name for change in changes] == sorted(
        change.tool.exposed_name for change in changes
    )


def test_render_diff_is_a_readable_table() -> None:
    text = render_diff(diff_policies(load_policy(OLD), load_policy(NEW), TOOLS))

    lines = text.splitlines()
    assert lines[0].split() == ["tool", "server", "agents", "before", "after"]
    assert set(lines[1]) <= {"-", " "}
    withdraw = next(line for line in lines if line.startswith("exchange__withdraw"))
    assert "every agent" in withdraw
    assert "require_approval by rules[3] 'withdraw', timeout 300s" in withdraw
    assert "deny by rules[5] 'withdraw'; not listed" in withdraw
    ticker = next(line for line in lines if line.startswith("exchange__get_ticker"))
    assert "allow by rules[0] 'get_*', max 60/60s" in ticker
    assert "allow by rules[4] 'get_ticker', max 5/60s" in ticker
    hidden = next(line for line in lines if line.startswith("exchange__send_email"))
    assert "hide by hide[0] 'send_email'" in hidden
    assert lines[-1] == "6 tools change."


def test_to_dict_is_json_ready() -> None:
    changes = diff_policies(load_policy(OLD), load_policy(NEW), TOOLS)

    documents = json.loads(json.dumps([change.to_dict() for change in changes]))

    place = next(document for document in documents if document["tool"]["name"] == "place_order")
    assert place == {
        "tool": {"server": "exchange", "name": "place_order", "exposed_name": "exchange__place_order"},
        "agents": "every agent",
        "changed": ["action", "rate_limit", "approval"],
        "old": {
            "listed": True,
            "conditional": [],
            "action": "require_approval",
            "rule": "rules[1] 'exchange__place_order'",
            "rate_limit": None,
            "approval": {"timeout": 300.0, "on_timeout": "deny", "approvers": [], "channels": []},
        },
        "new": {
            "listed": True,
            "conditional": [],
            "action": "allow",
            "rule": "rules[2] 'exchange__place_order'",
            "rate_limit": {"max": 10, "window": 60.0},
            "approval": None,
        },
    }


def test_diff_can_be_narrowed_to_one_agent() -> None:
    scoped = OLD + '  - tool: "withdraw"\n    action: allow\n    agents: ["treasurer"]\n'

    for_treasurer = diff_policies(load_policy(OLD), load_policy(scoped), TOOLS, agent="treasurer")
    for_someone_else = diff_policies(load_policy(OLD), load_policy(scoped), TOOLS, agent="intern")

    assert [change.tool.name for change in for_treasurer] == ["withdraw"]
    assert for_someone_else == []


def test_hostile_names_cannot_break_the_table() -> None:
    tool = CatalogueTool("srv\x1b[2J", "x\ny", "srv__x\ny", {})

    text = render_diff(diff_policies(load_policy(OLD), load_policy('version: "1"\ndefault: allow\n'), [tool]))

    assert "\x1b" not in text
    assert "srv__x\\x0ay" in text


THRESHOLD = """
version: "1"
default: deny
rules:
  - tool: "place_order"
    action: allow
  - tool: "place_order"
    action: require_approval
    when: {"args.quantity": {"gt": 5}}
"""


def test_a_raised_condition_threshold_is_a_change() -> None:
    loosened = THRESHOLD.replace('"gt": 5}', '"gt": 5000000}')

    changes = diff_policies(load_policy(THRESHOLD), load_policy(loosened), TOOLS)

    assert [(change.tool.name, change.agents, change.changed) for change in changes] == [
        ("place_order", "every agent", ("conditions",))
    ]
    text = render_diff(changes)
    assert (
        "when args.quantity gt 5: require_approval by rules[1] 'place_order', timeout 300s; "
        "otherwise allow by rules[0] 'place_order'"
    ) in text
    assert "when args.quantity gt 5000000: require_approval" in text
    assert text.endswith("1 tool changes.\n")


def test_a_dropped_condition_is_a_change() -> None:
    unconditional = 'version: "1"\ndefault: deny\nrules:\n  - {tool: place_order, action: allow}\n'

    changes = diff_policies(load_policy(THRESHOLD), load_policy(unconditional), TOOLS)

    assert [change.changed for change in changes] == [("conditions",)]
    assert changes[0].old.conditional[0].when == ("args.quantity gt 5",)
    assert changes[0].new.conditional == ()


def test_a_rule_for_one_agent_is_reported_for_that_agent_only() -> None:
    base = 'version: "1"\ndefault: deny\nrules:\n  - {tool: "get_*", action: allow}\n'
    for_bot = base + "  - tool: withdraw\n    action: allow\n    agents: [trading-bot]\n"

    changes = diff_policies(load_policy(base), load_policy(for_bot), TOOLS)

    assert [(change.tool.name, change.agents) for change in changes] == [("withdraw", "trading-bot")]
    assert (changes[0].old.action, changes[0].new.action) == (Action.DENY, Action.ALLOW)
    assert (changes[0].old.listed, changes[0].new.listed) == (False, True)
    assert "trading-bot" in render_diff(changes)


def test_agents_that_differ_differently_get_their_own_rows() -> None:
    old = """
version: "1"
default: deny
rules:
  - {tool: withdraw, action: require_approval, agents: [treasurer]}
  - {tool: withdraw, action: allow, agents: ["ops-*"]}
"""
    new = """
version: "1"
default: deny
rules:
  - {tool: withdraw, action: allow, agents: [treasurer]}
  - {tool: withdraw, action: require_approval}
"""

    changes = diff_policies(load_policy(old), load_policy(new), TOOLS)

    assert [(change.agents, change.old.action, change.new.action) for change in changes] == [
        ("agents matching 'ops-*'", Action.ALLOW, Action.REQUIRE_APPROVAL),
        ("treasurer", Action.REQUIRE_APPROVAL, Action.ALLOW),
        ("any other agent", Action.DENY, Action.REQUIRE_APPROVAL),
    ]


def test_agents_matched_only_by_overlapping_globs_are_still_flagged() -> None:
    allow_first = """
version: "1"
default: deny
rules:
  - {tool: withdraw, action: allow, agents: ["a*"]}
  - {tool: withdraw, action: deny, agents: ["*b"]}
"""
    deny_first = """
version: "1"
default: deny
rules:
  - {tool: withdraw, action: deny, agents: ["*b"]}
  - {tool: withdraw, action: allow, agents: ["a*"]}
"""

    changes = diff_policies(load_policy(allow_first), load_policy(deny_first), TOOLS)

    assert [(change.tool.name, change.agents, change.changed) for change in changes] == [
        ("withdraw", "agents matched by globs", ("conditions",))
    ]
    assert load_policy(allow_first).decide("withdraw", agent="ab").action is Action.ALLOW
    assert load_policy(deny_first).decide("withdraw", agent="ab").action is Action.DENY


def test_a_changed_spend_limit_is_a_change() -> None:
    base = 'version: "1"\nrules:\n  - tool: place_order\n    action: allow\n'
    before = base + '    limits: [{sum: "args.quantity * args.price", max: 1000, window: 1d}]\n'
    after = base + '    limits: [{sum: "args.quantity * args.price", max: 5000, window: 1d}]\n'
    [change] = diff_policies(load_policy(before), load_policy(after), TOOLS)
    assert change.changed == ("limits",)
    assert change.to_dict()["new"]["limits"][0]["max"] == "5000"
    assert "limit sum of args.quantity * args.price <= 5000 per 1d" in render_diff([change])
    assert diff_policies(load_policy(before), load_policy(before), TOOLS) == []
