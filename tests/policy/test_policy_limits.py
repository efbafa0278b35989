"""The ``limits`` setting: parsing with positioned refusals, exact amounts, bounds and windows."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from broker.policy import PolicyError
from broker.policy.amounts import AmountError, ExpressionError, evaluate, parse_expression
from broker.policy.limits import SpendLimit
from broker.policy.loader import load_policy


def rule(extra: str, action: str = "allow") -> str:
    return f'version: "1"\nrules:\n  - tool: place_order\n    action: {action}\n{extra}'


def limits_of(text: str) -> tuple[SpendLimit, ...]:
    [compiled] = load_policy(text, source="policy.yaml").rules
    return compiled.decision.limits


def test_a_full_limit_and_the_defaults() -> None:
    [notional, count] = limits_of(
        rule(
            "    limits:\n"
            '      - {sum: "args.quantity * args.price", max: 50000, window: 1d, align: calendar,\n'
            "         per: global, counter: notional, reason: capped}\n"
            "      - {count: true, below: 3, window: 1m}\n"
        )
    )
    assert notional.counter == "notional" and notional.per == "global" and notional.align == "calendar"
    assert notional.window_seconds == 86400 and notional.inclusive and notional.bound == 50000
    assert notional.reason == "capped"
    assert notional.units({"quantity": 2, "price": 0.1}) == 200_000
    assert count.counter == "rules[0] 'place_order'#1" and count.per == "agent" and count.align == "sliding"
    assert count.units(None) == 1_000_000
    assert count.ceiling_units == 3_000_000 - 1
    assert notional.ceiling_units == 50_000 * 1_000_000


def test_rules_without_limits_have_none_and_a_rule_id_names_the_counter() -> None:
    assert limits_of(rule("")) == ()
    [limit] = limits_of(
        rule("    id: orders\n    limits: [{count: true, increment: 2.5, max: 10, window: 60}]\n")
    )
    assert limit.counter == "orders#0" and limit.units({}) == 2_500_000


@pytest.mark.parametrize(
    ("extra", "position", "words"),
    [
        ("    limits: 5\n", "policy.yaml:5:13", "non-empty list"),
        ("    limits: []\n", "policy.yaml:5:13", "non-empty list"),
        ("    limits: [{max: 5, window: 1h}]\n", "policy.yaml:5:14", "exactly one of 'sum"),
        (
            "    limits: [{count: true, sum: args.a, max: 5, window: 1h}]\n",
            "policy.yaml:5:14",
            "exactly one of 'sum",
        ),
        ("    limits: [{count: true, window: 1h}]\n", "policy.yaml:5:14", "exactly one of 'max"),
        (
            "    limits: [{count: true, max: 1, below: 2, window: 1h}]\n",
            "policy.yaml:5:14",
            "exactly one of 'max",
        ),
        ("    limits: [{count: true, max: -1, window: 1h}]\n", "policy.yaml:5:33", "at least 0"),
        ("    limits: [{count: true, max: 0.0000001, window: 1h}]\n", "policy.yaml:5:33", "6 decimal places"),
        ("    limits: [{count: true, below: 0, window: 1h}]\n", "policy.yaml:5:35", "action: deny"),
        ("    limits: [{count: true, max: 1}]\n", "policy.yaml:5:14", "needs 'window'"),
        ("    limits: [{count: true, max: 1, window: 32d}]\n", "policy.yaml:5:44", "at most 31 days"),
        ("    limits: [{count: true, max: 1, window: soon}]\n", "policy.yaml:5:44", "not a duration"),
        (
            "    limits: [{count: true, max: 1, window: 7m, align: calendar}]\n",
            "policy.yaml:5:44",
            "divide a day",
        ),
        (
            "    limits: [{count: true, max: 1, window: 1h, align: weekly}]\n",
            "policy.yaml:5:55",
            "sliding, calendar",
        ),
        (
            "    limits: [{count: true, max: 1, window: 1h, per: team}]\n",
            "policy.yaml:5:53",
            "agent, session",
        ),
        ("    limits: [{count: 1, max: 1, window: 1h}]\n", "policy.yaml:5:22", "count must be true"),
        (
            "    limits: [{count: true, increment: 0, max: 1, window: 1h}]\n",
            "policy.yaml:5:39",
            "greater than zero",
        ),
        (
            "    limits: [{sum: args.a, increment: 2, max: 1, window: 1h}]\n",
            "policy.yaml:5:39",
            "goes with 'count",
        ),
        ("    limits: [{sum: 5, max: 1, window: 1h}]\n", "policy.yaml:5:20", "expression like"),
        ("    limits: [{sum: 'args.a * ', max: 1, window: 1h}]\n", "policy.yaml:5:20", "ends too early"),
        ("    limits: [{sum: 'import(os)', max: 1, window: 1h}]\n", "policy.yaml:5:20", "cannot read"),
        ("    limits: [{sum: '(args.a', max: 1, window: 1h}]\n", "policy.yaml:5:20", "without its ')'"),
        (
            "    limits: [{count: true, max: 1, window: 1h, colour: red}]\n",
            "policy.yaml:5:48",
            "unknown key 'colour'",
        ),
        (
            "    limits: [{count: true, max: 1, window: 1h, counter: ''}]\n",
            "policy.yaml:5:57",
            "non-empty text",
        ),
        ("    limits: [7]\n", "policy.yaml:5:14", "must be a mapping"),
    ],
)
def test_bad_limits_are_refused_with_their_position(extra: str, position: str, words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(rule(extra), source="policy.yaml")
    [problem] = caught.value.problems
    assert str(problem).startswith(position), str(problem)
    assert words in problem.message


def test_a_deny_rule_may_not_carry_limits() -> None:
    with pytest.raises(PolicyError, match="this rule denies"):
        load_policy(rule("    limits: [{count: true, max: 1, window: 1h}]\n", "deny"), source="policy.yaml")


def test_expressions_are_exact_and_follow_precedence() -> None:
    tree = parse_expression("args.a + args.b * (2 - args.c) - -1")
    assert evaluate(tree, {"a": 0.1, "b": 0.2, "c": 1}) == Decimal("1.3")
    assert evaluate(
        parse_expression("args.order.qty*args.order.px"), {"order": {"qty": 3, "px": 1.5}}
    ) == Decimal("4.5")
    with pytest.raises(ExpressionError):
        parse_expression("args.a ** 2")
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse_expression("(" * 60 + "1" + ")" * 60)


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ({}, "args.amount is missing"),
        (None, "args.amount is missing"),
        ({"amount": "10"}, "must be a JSON number, got str"),
        ({"amount": True}, "got bool"),
        ({"amount": None}, "got null"),
        ({"amount": float("nan")}, "finite"),
        ({"amount": float("inf")}, "finite"),
        ({"amount": -5}, "negative"),
        ({"amount": {"value": 1}}, "got dict"),
    ],
)
def test_an_unusable_amount_is_refused_never_free(arguments: dict[str, object] | None, words: str) -> None:
    [limit] = limits_of(rule('    limits: [{sum: "args.amount", max: 100, window: 1h}]\n'))
    with pytest.raises(AmountError, match=words):
        limit.units(arguments)


def test_amounts_round_up_to_the_next_unit() -> None:
    [limit] = limits_of(rule('    limits: [{sum: "args.amount", max: 100, window: 1h}]\n'))
    assert limit.units({"amount": 0.0000001}) == 1
    assert limit.units({"amount": 0}) == 0


def test_windows_and_counter_keys() -> None:
    [sliding, calendar] = limits_of(
        rule(
            "    limits:\n"
            "      - {count: true, max: 5, window: 1h, per: session}\n"
            "      - {count: true, max: 5, window: 1d, align: calendar, per: tool}\n"
        )
    )
    now = 1_700_000_123.5
    assert sliding.window_start(now) == now - 3600 and sliding.calendar_end(now) is None
    assert calendar.window_start(now) == 1_699_920_000 and calendar.calendar_end(now) == 1_700_006_400
    assert sliding.counter_key(agent="a", session=None, tool="t").endswith("|session:-")
    assert calendar.counter_key(agent="a", session="s", tool="place_order").endswith("|tool:place_order")


def test_explain_and_check_show_limits() -> None:
    text = rule('    id: orders\n    limits: [{sum: "args.q * args.p", below: 10.5, window: 1d}]\n')
    policy = load_policy(text, source="policy.yaml")
    rendered = policy.explain("place_order", arguments={"q": 1, "p": 2}).render()
    assert (
        "limit:     sum of args.q * args.p < 10.5 per 1d (sliding, per agent, counter orders#0)" in rendered
    )


def test_the_readme_example_policy_loads_and_shares_its_counter() -> None:
    path = Path(__file__).resolve().parents[2] / "policies" / "spend-limits.yaml"
    policy = load_policy(path.read_bytes(), source=str(path))
    small = policy.decide("place_order", agent="trading-bot", arguments={"quantity": 2, "price": 90000})
    large = policy.decide("place_order", agent="trading-bot", arguments={"quantity": 200, "price": 10})
    assert (small.rule, large.rule) == ("orders", "large-orders")
    assert small.limits[0].counter == large.limits[0].counter == "orders#0"
    assert small.limits[0].units({"quantity": 2, "price": 90000}) == 180_000 * 1_000_000
    assert small.limits[1].counter_key(agent="a", session="s", tool="t") == "orders-per-hour|global:"
