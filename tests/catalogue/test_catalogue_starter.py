from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from broker.catalogue import (
    Category,
    Risk,
    StarterPolicyError,
    ToolClassification,
    classify_tool,
    starter_policy_yaml,
)
from broker.policy import Action, load_policy

FIXTURES = Path(__file__).with_name("fixtures")


@pytest.fixture(scope="module")
def defi() -> list[ToolClassification]:
    fixture = json.loads((FIXTURES / "defi_tools.json").read_text())
    return [
        classify_tool(definition, server["name"])
        for server in fixture["servers"]
        for definition in server["tools"]
    ]


def made(name: str, category: Category, risk: Risk, server: str = "srv") -> ToolClassification:
    return ToolClassification(server, name, category, risk, (f"because of {name}", "second reason", "third"))


def test_the_defi_policy_loads_and_decides_every_tool_by_class(defi: list[ToolClassification]) -> None:
    policy = load_policy(starter_policy_yaml(defi, multiple_servers=True), source="starter.yaml")

    assert policy.default is Action.DENY
    assert len(policy.rules) == len(defi)
    for item in defi:
        decision = policy.decide(item.name, server=item.server)
        assert decision.rule.endswith(f"'{item.server}__{item.name}'"), (item, decision)
        if item.risk is Risk.CRITICAL:
            assert decision.action is Action.REQUIRE_APPROVAL
            assert decision.approval is not None and decision.approval.timeout_seconds == 300
        elif item.risk is Risk.HIGH and item.category in (Category.CODE_EXECUTION, Category.CREDENTIALS):
            assert decision.action is Action.DENY
            assert (
                decision.reason
                == f"{item.category.value} tool rated high: denied until an operator decides otherwise"
            )
        elif item.risk is Risk.HIGH:
            assert decision.action is Action.REQUIRE_APPROVAL
        elif item.category is Category.WRITE:
            assert decision.action is Action.ALLOW
            assert decision.rate_limit is not None
            assert (decision.rate_limit.max_calls, decision.rate_limit.window_seconds) == (10, 60)
        elif item.category is Category.READ_ONLY:
            assert decision.action is Action.ALLOW
            assert decision.rate_limit is not None
            assert (decision.rate_limit.max_calls, decision.rate_limit.window_seconds) == (60, 60)
        # Qualified rules do not leak onto the same tool name on another server.
        assert policy.decide(item.name, server="elsewhere").rule == "default"


def test_each_class_gets_its_action() -> None:
    items = [
        made("withdraw", Category.FINANCIAL, Risk.CRITICAL),
        made("run_shell", Category.CODE_EXECUTION, Risk.CRITICAL),
        made("place_order", Category.FINANCIAL, Risk.HIGH),
        made("delete_file", Category.DESTRUCTIVE, Risk.HIGH),
        made("install_package", Category.CODE_EXECUTION, Risk.HIGH),
        made("list_api_keys", Category.CREDENTIALS, Risk.HIGH),
        made("send_email", Category.EXTERNAL_COMMUNICATION, Risk.HIGH),
        made("update_profile", Category.WRITE, Risk.MEDIUM),
        made("get_ticker", Category.READ_ONLY, Risk.LOW),
    ]

    policy = load_policy(starter_policy_yaml(items, multiple_servers=False))

    actions = {item.name: policy.decide(item.name).action for item in items}
    assert actions == {
        "withdraw": Action.REQUIRE_APPROVAL,
        "run_shell": Action.REQUIRE_APPROVAL,
        "place_order": Action.REQUIRE_APPROVAL,
        "delete_file": Action.REQUIRE_APPROVAL,
        "install_package": Action.DENY,
        "list_api_keys": Action.DENY,
        "send_email": Action.REQUIRE_APPROVAL,
        "update_profile": Action.ALLOW,
        "get_ticker": Action.ALLOW,
    }
    assert policy.is_listed("get_ticker")
    assert not policy.is_listed("install_package")
    assert policy.decide("unknown_tool").rule == "default"


def test_every_rule_has_a_comment_saying_why() -> None:
    items = [
        made("withdraw", Category.FINANCIAL, Risk.CRITICAL),
        made("get_ticker", Category.READ_ONLY, Risk.LOW),
    ]

    text = starter_policy_yaml(items, multiple_servers=False)

    lines = text.splitlines()
    for name, heading in (("withdraw", "financial, critical"), ("get_ticker", "read_only, low")):
        index = lines.index(f'  - tool: "{name}"')
        assert lines[index - 3 : index] == [
            f"  # {heading}",
            f"  #   because of {name}",
            "  #   second reason",
        ]
    assert "third" not in text
    assert text.index('"withdraw"') < text.index('"get_ticker"'), "riskiest rules come first"


def test_the_document_has_the_expected_shape() -> None:
    text = starter_policy_yaml([made("withdraw", Category.FINANCIAL, Risk.CRITICAL)], multiple_servers=False)

    assert yaml.safe_load(text) == {
        "version": "1",
        "default": "deny",
        "rules": [
            {
                "tool": "withdraw",
                "action": "require_approval",
                "timeout": 300,
                "reason": "financial tool rated critical: a human approves every call",
            }
        ],
    }


def test_output_is_deterministic(defi: list[ToolClassification]) -> None:
    shuffled = list(defi)
    random.Random(7).shuffle(shuffled)

    assert starter_policy_yaml(shuffled, multiple_servers=True) == starter_policy_yaml(
        defi, multiple_servers=True
    )


def test_no_tools_gives_a_deny_everything_policy() -> None:
    policy = load_policy(starter_policy_yaml([], multiple_servers=True))

    assert policy.rules == ()
    assert policy.decide("anything").action is Action.DENY


def test_bare_names_from_two_servers_are_refused() -> None:
    items = [
        made("get_ticker", Category.READ_ONLY, Risk.LOW, server="binance"),
        made("get_ticker", Category.READ_ONLY, Risk.LOW, server="kraken"),
    ]

    with pytest.raises(StarterPolicyError, match="offered by servers 'binance' and 'kraken'"):
        starter_policy_yaml(items, multiple_servers=False)
    policy = load_policy(starter_policy_yaml(items, multiple_servers=True))
    assert policy.decide("get_ticker", server="kraken").rule == "rules[1] 'kraken__get_ticker'"


def test_a_tool_listed_twice_by_one_server_gets_the_stricter_rule() -> None:
    items = [
        made("sync", Category.WRITE, Risk.MEDIUM),
        made("sync", Category.DESTRUCTIVE, Risk.HIGH),
    ]

    policy = load_policy(starter_policy_yaml(items, multiple_servers=False))

    assert len(policy.rules) == 1
    assert policy.decide("sync").action is Action.REQUIRE_APPROVAL


def test_qualified_names_need_a_server() -> None:
    with pytest.raises(StarterPolicyError, match="no server name"):
        starter_policy_yaml([made("x", Category.WRITE, Risk.MEDIUM, server="")], multiple_servers=True)


def test_hostile_names_get_rules_for_themselves_only() -> None:
    hostile = [
        made("get_*", Category.READ_ONLY, Risk.LOW),
        made("[ab]c", Category.READ_ONLY, Risk.LOW),
        made("what?", Category.READ_ONLY, Risk.LOW),
        made(' quote"d\\ ', Category.READ_ONLY, Risk.LOW),
        made("evil\n- tool: '*'\n  action: allow", Category.FINANCIAL, Risk.CRITICAL),
        made("bell\x07\x1b[31mred\u2028line\ufeff", Category.FINANCIAL, Risk.CRITICAL),
        made("emoji_😀", Category.READ_ONLY, Risk.LOW),
    ]

    text = starter_policy_yaml(hostile, multiple_servers=False)
    policy = load_policy(text)

    assert len(policy.rules) == len(hostile)
    for item in hostile:
        expected = Action.REQUIRE_APPROVAL if item.risk is Risk.CRITICAL else Action.ALLOW
        assert policy.decide(item.name).action is expected, item.name
    for bystander in ("get_ticker", "ac", "bc", "whatx", "quote", "tool"):
        assert policy.decide(bystander).rule == "default", bystander
    assert all(line.startswith(("#", " ", "version", "default", "rules")) for line in text.splitlines())


def test_a_name_yaml_cannot_hold_falls_to_default_deny() -> None:
    items = [made("bad\ud800name", Category.READ_ONLY, Risk.LOW), made("fine", Category.READ_ONLY, Risk.LOW)]

    text = starter_policy_yaml(items, multiple_servers=False)
    policy = load_policy(text)

    assert "# skipped bad\\ud800name: its name is not valid Unicode (default: deny)" in text
    assert [rule.tool for rule in policy.rules] == ["fine"]
    assert policy.decide("bad\ud800name").action is Action.DENY


@pytest.mark.parametrize(
    "name",
    [
        "market_buy",
        "market_sell",
        "spot_market_buy",
        "binance_market_sell",
        "balance_transfer",
        "quote_and_swap",
    ],
)
def test_the_starter_policy_never_lets_money_move_unattended(name: str) -> None:
    definition = {
        "name": name,
        "description": "Places a market sell order for the given symbol and quantity.",
        "inputSchema": {"type": "object", "properties": {"symbol": {}, "quantity": {}}},
    }
    policy = load_policy(
        starter_policy_yaml([classify_tool(definition, "desk")], multiple_servers=False),
        source="starter.yaml",
    )

    assert policy.decide(name, server="desk").action is Action.REQUIRE_APPROVAL
