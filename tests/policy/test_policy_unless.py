"""A rule's ``unless``: it applies when its conditions do not all hold (missing or wrong-typed
arguments included), it combines with ``when``, and it ranks as a conditional rule."""

from __future__ import annotations

import pytest

from broker.policy import PolicyError
from broker.policy.decision import Action
from broker.policy.loader import load_policy

POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    id: small orders only
    action: deny
    reason: orders over 100 are refused
    unless: {"args.qty": {lte: 100}}
  - tool: place_order
    id: no selling of BTC unless reduce-only
    action: deny
    when: {"args.side": SELL, "args.symbol": BTC}
    unless: {"args.reduce_only": true}
  - tool: place_order
    action: allow
"""


@pytest.mark.parametrize(
    ("arguments", "rule"),
    [
        ({"qty": 5, "side": "BUY", "symbol": "BTC"}, "rules[2] 'place_order'"),
        ({"qty": 500}, "small orders only"),
        ({}, "small orders only"),
        ({"qty": "many"}, "small orders only"),
        ({"qty": 5, "side": "SELL", "symbol": "BTC"}, "no selling of BTC unless reduce-only"),
        ({"qty": 5, "side": "SELL", "symbol": "BTC", "reduce_only": True}, "rules[2] 'place_order'"),
        ({"qty": 5, "side": "SELL", "symbol": "ETH"}, "rules[2] 'place_order'"),
    ],
)
def test_unless_decides(arguments: dict[str, object], rule: str) -> None:
    decision = load_policy(POLICY).decide("place_order", arguments=arguments)
    assert decision.rule == rule
    assert decision.action is (Action.ALLOW if rule.startswith("rules[") else Action.DENY)


def test_a_conditional_deny_by_unless_keeps_the_tool_listed_and_explains_itself() -> None:
    policy = load_policy(POLICY)
    assert policy.is_listed("place_order")
    text = policy.explain("place_order", arguments={"qty": 500}).render()
    assert "unless args.qty lte 100: does not hold" in text


def test_unless_is_checked_like_when() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(
            'version: "1"\nrules:\n  - tool: t\n    action: deny\n    unless: {"args.x": {lt: "a"}}\n'
        )
    [problem] = caught.value.problems
    assert (problem.line, problem.column) == (5, 29) and "'lt' needs a number" in problem.message
