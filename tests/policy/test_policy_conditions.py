"""`when` conditions: each operator, missing paths, type mismatches, and how they steer a decision."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, cast

import pytest

from broker.policy import Action, load_policy
from broker.policy.conditions import MISSING, as_number, compile_path, compile_test


def holds(operator: str, operand: Any, value: Any) -> bool:
    return compile_test(operator, operand)(value)


@pytest.mark.parametrize(
    ("operator", "operand", "value", "expected"),
    [
        ("eq", "SELL", "SELL", True),
        ("eq", "SELL", "sell", False),
        ("eq", 1, 1.0, True),
        ("eq", 1, True, False),
        ("eq", True, 1, False),
        ("eq", True, True, True),
        ("eq", None, None, True),
        ("eq", None, MISSING, False),
        ("eq", "1", 1, False),
        ("eq", 100, "100", True),
        ("eq", 0.25, "0.25", True),
        ("eq", ["a", 1], ["a", 1], True),
        ("eq", ["a", 1], ["a", True], False),
        ("eq", {"k": 1}, {"k": 1}, True),
        ("eq", {"k": 1}, {"k": 1, "j": 2}, False),
        ("ne", "SELL", "BUY", True),
        ("ne", "SELL", "SELL", False),
        ("ne", "SELL", MISSING, True),
        ("ne", 5, "five", True),
        ("gt", 100, 101, True),
        ("gt", 100, 100, False),
        ("gte", 100, 100, True),
        ("lt", 100, 99.5, True),
        ("lte", 100, 100.0, True),
        ("lte", 100, 100.01, False),
        ("gt", 100, "150", True),
        ("gt", 100, " 150 ", True),
        ("gt", 100, "1.5e3", True),
        ("gt", 100, "50", False),
        ("gt", 100, "lots", False),
        ("gt", 100, True, False),
        ("gt", 100, None, False),
        ("gt", 100, [200], False),
        ("gt", 100, MISSING, False),
        ("lt", 100, float("nan"), False),
        ("gt", 10**30, "1" + "0" * 31, True),
        ("in", ["BTCUSDT", "ETHUSDT"], "ETHUSDT", True),
        ("in", ["BTCUSDT", "ETHUSDT"], "DOGEUSDT", False),
        ("in", [1, 2, 3], "2", True),
        ("in", [1, 2, 3], True, False),
        ("in", [None, False], False, True),
        ("in", [None, False], 0, False),
        ("in", [["a"]], ["a"], True),
        ("in", ["a"], MISSING, False),
        ("not_in", ["a", "b"], "c", True),
        ("not_in", ["a", "b"], "a", False),
        ("not_in", ["a", "b"], MISSING, True),
        ("contains", "cancel", "please cancel all", True),
        ("contains", "cancel", "CANCEL", False),
        ("contains", "x", ["x", "y"], True),
        ("contains", 1, [True], False),
        ("contains", 1, ["1"], True),
        ("contains", "x", 5, False),
        ("contains", "x", MISSING, False),
        ("matches", "[A-Z]+USDT", "BTCUSDT", True),
        ("matches", "[A-Z]+USDT", "BTCUSDT; DROP", False),
        ("matches", "[A-Z]+USDT", "xBTCUSDT", False),
        ("matches", "\\d+", 123, False),
        ("matches", ".*", MISSING, False),
        ("exists", True, None, True),
        ("exists", True, MISSING, False),
        ("exists", False, MISSING, True),
        ("exists", False, 0, False),
    ],
)
def test_operator(operator: str, operand: Any, value: Any, expected: bool) -> None:
    assert holds(operator, operand, value) is expected


def test_numbers_from_text() -> None:
    assert as_number("007") == 7
    assert as_number("-1.5") == -1.5
    assert as_number(".5") == 0.5
    assert as_number("1_000") is None
    assert as_number("0x10") is None
    assert as_number("inf") is None
    assert as_number(False) is None
    assert as_number("9" * 5000) == float("inf")


def test_paths_step_through_mappings_and_list_indexes() -> None:
    arguments = {"orders": [{"qty": 5}, {"qty": 7, "tags": ["a"]}], "meta": {"0": "zero"}, "n": 3}
    assert compile_path("args.orders.1.qty")(arguments) == 7
    assert compile_path("args.orders.1.tags.0")(arguments) == "a"
    assert compile_path("args.meta.0")(arguments) == "zero"
    assert compile_path("args.n")(arguments) == 3
    assert compile_path("args.orders.2.qty")(arguments) is MISSING
    assert compile_path("args.orders.x")(arguments) is MISSING
    assert compile_path("args.n.deeper")(arguments) is MISSING
    assert compile_path("args.absent.deeper")(arguments) is MISSING
    assert compile_path("args.absent")(arguments) is MISSING


def test_arguments_that_are_not_a_mapping_resolve_nothing_and_raise_nothing() -> None:
    policy = load_policy(
        'version: "1"\nrules:\n  - {tool: t, when: {args.0: {exists: false}}, action: allow}\n'
    )
    for arguments in (["x"], "text", 5, None):
        assert policy.decide("t", arguments=cast(Any, arguments)).action is Action.ALLOW
    assert compile_path("args.0")(cast(Any, ["x"])) is MISSING


def test_paths_work_on_any_mapping_not_just_dict() -> None:
    arguments: Mapping[str, Any] = MappingProxyType({"a": MappingProxyType({"b": 1})})
    assert compile_path("args.a")(arguments) == {"b": 1}
    assert compile_path("args.a.b")(arguments) == 1


CONDITIONAL = """\
version: "1"
default: deny
rules:
  - tool: place_order
    id: big
    when: {"args.quantity": {gt: 100}}
    action: require_approval
  - tool: place_order
    id: sell-btc
    when:
      "args.side": SELL
      "args.symbol": {in: [BTCUSDT, BTCUSD]}
    action: deny
  - tool: place_order
    id: any-order
    action: allow
"""


@pytest.mark.parametrize(
    ("arguments", "rule"),
    [
        ({"quantity": 150}, "big"),
        ({"quantity": "150"}, "big"),
        ({"quantity": 50}, "any-order"),
        ({"quantity": "lots"}, "any-order"),
        ({}, "any-order"),
        (None, "any-order"),
        ({"side": "SELL", "symbol": "BTCUSDT"}, "sell-btc"),
        ({"side": "SELL", "symbol": "ETHUSDT"}, "any-order"),
        ({"side": "SELL"}, "any-order"),
        ({"side": "SELL", "symbol": "BTCUSD", "quantity": 500}, "big"),
    ],
)
def test_conditions_choose_between_rules(arguments: dict[str, Any] | None, rule: str) -> None:
    policy = load_policy(CONDITIONAL)
    assert policy.decide("place_order", arguments=arguments).rule == rule


def test_a_failed_condition_falls_through_to_the_default() -> None:
    policy = load_policy(
        'version: "1"\ndefault: deny\nrules:\n'
        "  - {tool: t, when: {args.dry_run: {eq: true}}, action: allow}\n"
    )
    assert policy.decide("t", arguments={"dry_run": True}).action is Action.ALLOW
    assert policy.decide("t", arguments={"dry_run": "true"}).action is Action.DENY
    assert policy.decide("t", arguments={"dry_run": 1}).action is Action.DENY
    assert policy.decide("t").rule == "default"


CLAIMS_POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    action: allow
    when:
      "claims.groups": {contains: trading-leads}
      "args.quantity": {lte: 10}
  - tool: place_order
    action: require_approval
    when:
      "claims.scope": {matches: ".*\\\\btrade\\\\b.*"}
"""


def test_claims_paths_read_the_token_and_are_missing_for_api_key_agents() -> None:
    from broker.policy.conditions import with_claims

    policy = load_policy(CLAIMS_POLICY)
    lead = {"groups": ["trading-leads"], "scope": "tools:call"}
    trader = {"groups": [], "scope": "tools:call trade"}
    order = {"quantity": 5}
    assert policy.decide("place_order", agent="a", arguments=with_claims(order, lead)).action is Action.ALLOW
    assert (
        policy.decide("place_order", agent="a", arguments=with_claims({"quantity": 50}, lead)).action
        is Action.DENY
    )
    held = policy.decide("place_order", agent="b", arguments=with_claims(order, trader))
    assert held.action is Action.REQUIRE_APPROVAL
    # An API-key agent has no claims: the claims conditions do not hold, and nothing breaks.
    assert policy.decide("place_order", agent="c", arguments=order).action is Action.DENY
    assert compile_path("claims.groups.0")(with_claims({}, lead)) == "trading-leads"
    assert compile_path("claims.tenant")(with_claims({}, lead)) is MISSING
    assert compile_path("claims.groups")({"groups": ["x"]}) is MISSING  # arguments are not claims
