"""PolicyLayer policies load unchanged and decide as PolicyLayer documents them.

The documents are PolicyLayer's own examples (tests/policy/formats/data, sources in SOURCES.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.policy import PolicyError
from broker.policy.decision import Action
from broker.policy.document import parse_document
from broker.policy.engine import Policy
from broker.policy.formats import Format, detect_format
from broker.policy.loader import load_policy

DATA = Path(__file__).parent / "data"


def load(name: str) -> Policy:
    return load_policy((DATA / name).read_bytes(), source=name)


def action(policy: Policy, tool: str, **arguments: Any) -> Action:
    return policy.decide(tool, arguments=arguments).action


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("intercept_testdata_valid_policy.yaml", Format.INTERCEPT),
        ("intercept_testdata_default_deny_policy.yaml", Format.INTERCEPT),
        ("intercept_scaffold_stripe.yaml", Format.INTERCEPT),
        ("intercept_scaffold_github.yaml", Format.INTERCEPT),
        ("intercept_policy_md_github.yaml", Format.INTERCEPT),
        ("intercept_policy_md_stripe.yaml", Format.INTERCEPT),
        ("intercept_policy_md_default_deny.yaml", Format.INTERCEPT),
        ("hosted_docs_shape.json", Format.HOSTED),
        ("hosted_docs_default_deny.json", Format.HOSTED),
        ("hosted_docs_custom.json", Format.HOSTED),
        ("hosted_issue_crypto.json", Format.HOSTED),
        ("hosted_issue_hide.json", Format.NATIVE),
    ],
)
def test_each_example_is_recognised_and_loads(name: str, expected: Format) -> None:
    text = (DATA / name).read_text()
    assert detect_format(parse_document(text, source=name)) is expected
    assert load(name).revision


def test_the_issue_policies() -> None:
    crypto = load("hosted_issue_crypto.json")
    assert action(crypto, "get_crypto_prices") is Action.ALLOW
    assert action(crypto, "place_order") is Action.DENY
    hide = load("hosted_issue_hide.json")
    assert action(hide, "binance_us_cust_cancel_order") is Action.HIDE
    assert action(hide, "anything_else") is Action.DENY


def test_intercept_stripe_example_decides_rule_by_rule() -> None:
    policy = load("intercept_testdata_valid_policy.yaml")
    assert action(policy, "create_charge", amount=100, currency="usd") is Action.ALLOW
    too_big = policy.decide("create_charge", arguments={"amount": 50001, "currency": "usd"})
    assert too_big.action is Action.DENY and too_big.reason == "Single charge cannot exceed $500.00"
    gbp = policy.decide("create_charge", arguments={"amount": 100, "currency": "gbp"})
    assert gbp.reason == "Only USD and EUR charges are permitted"
    # A condition on a missing argument fails, so leaving the amount out is refused.
    assert action(policy, "create_charge", currency="usd") is Action.DENY
    # A wrong type fails too (a native negation would have let it through).
    assert action(policy, "create_charge", amount="lots", currency="usd") is Action.DENY
    assert policy.decide("delete_customer").reason == "Customer deletion is not permitted via AI agents"
    # default allow: an unlisted tool is allowed, but still counted by the "*" rule.
    unlisted = policy.decide("list_products")
    assert unlisted.action is Action.ALLOW
    assert [limit.counter for limit in unlisted.limits] == ["_global.calls_per_minute"]


def test_counters_become_calendar_limits_and_lt_lte_differ_by_one() -> None:
    policy = load("intercept_testdata_valid_policy.yaml")
    charge = policy.decide("create_charge", arguments={"amount": 5, "currency": "usd"})
    spend, per_minute = charge.limits
    assert spend.counter == "create_charge.daily_spend" and spend.align == "calendar"
    assert spend.window_seconds == 86400 and spend.per == "global"
    assert spend.bound == 1_000_000 and not spend.inclusive  # op: lt
    assert spend.units({"amount": 5}) == 5 * 1_000_000  # increment_from: args.amount
    assert per_minute.counter == "_global.calls_per_minute" and per_minute.window_seconds == 60
    issue = policy.decide("create_issue")
    rate, _ = issue.limits
    assert rate.bound == 5 and rate.inclusive and rate.window_seconds == 3600  # rate_limit: 5/hour
    assert rate.reason == "Hourly limit of 5 new issues reached"
    stripe_md = load("intercept_policy_md_stripe.yaml")
    [lte_spend, _] = stripe_md.decide("create_charge", arguments={"amount": 5, "currency": "usd"}).limits
    assert lte_spend.bound == 1_000_000 and lte_spend.inclusive  # op: lte
    assert lte_spend.ceiling_units == spend.ceiling_units + 1


def test_default_deny_and_wildcards_do_not_rescue_unlisted_tools() -> None:
    policy = load("intercept_testdata_default_deny_policy.yaml")
    assert action(policy, "read_file") is Action.ALLOW
    assert action(policy, "write_file") is Action.DENY
    assert action(policy, "delete_customer") is Action.DENY
    assert not policy.is_listed("write_file") and policy.is_listed("read_file")
    [hourly, global_rate] = policy.decide("create_issue").limits
    assert (hourly.counter, global_rate.counter) == ("create_issue._rate_hour", "_global._rate_minute")
    assert global_rate.reason == "Rate limit of 60 per minute reached. Try again later."


def test_github_example_hides_and_denies() -> None:
    policy = load("intercept_policy_md_github.yaml")
    assert action(policy, "transfer_repository") is Action.HIDE
    assert not policy.is_listed("list_webhooks")
    assert policy.decide("delete_repository").reason == "Repository deletion is not permitted via AI agents"
    assert action(policy, "create_issue") is Action.ALLOW


def test_hide_star_hides_everything() -> None:
    policy = load_policy('version: "1"\nhide: ["*"]\ntools:\n  read_file:\n    rules: []\n')
    assert action(policy, "read_file") is Action.HIDE


@pytest.mark.parametrize(
    ("op", "value", "passes", "fails"),
    [
        ("eq", "main", ["main"], ["dev", None]),
        ("neq", "draft", ["final"], ["draft", None]),
        ("in", ["usd", "eur"], ["usd"], ["gbp", None]),
        ("not_in", ["admin"], ["user"], ["admin", None]),
        ("lt", 100, [99], [100, "x", None]),
        ("lte", 100, [100], [101, None]),
        ("gt", 0, [1], [0, None]),
        ("gte", 1, [1], [0, None]),
        ("regex", "^feat/", ["feat/x"], ["fix/feat/x", None]),
        ("regex", "bc", ["abcd"], ["xyz"]),
        ("contains", "test", ["a test b", ["test"]], ["prod", None]),
        ("exists", True, ["anything"], [None]),
        ("exists", False, [None], ["anything"]),
    ],
)
def test_every_intercept_operator(op: str, value: Any, passes: list[Any], fails: list[Any]) -> None:
    import json

    policy = load_policy(
        'version: "1"\ntools:\n  t:\n    rules:\n      - name: r\n        conditions:\n'
        f'          - {{path: "args.x", op: "{op}", value: {json.dumps(value)}}}\n'
    )

    def call(argument: Any) -> Action:
        return action(policy, "t", **({} if argument is None else {"x": argument}))

    assert [call(argument) for argument in passes] == [Action.ALLOW] * len(passes)
    assert [call(argument) for argument in fails] == [Action.DENY] * len(fails)


def test_hosted_require_deny_if_and_limits() -> None:
    policy = load("hosted_docs_custom.json")
    assert action(policy, "create_refund", reason="duplicate") is Action.ALLOW
    assert action(policy, "create_refund") is Action.DENY
    big = policy.decide("create_charge", arguments={"amount": 10001})
    assert big.action is Action.DENY and big.reason == "Charges over 10000 need a person"
    # deny_if on a missing argument: the condition fails, so it does not deny.
    small = policy.decide("create_charge", arguments={})
    assert small.action is Action.ALLOW
    assert [(limit.counter, limit.per, int(limit.bound)) for limit in small.limits] == [
        ("create_charge.charges", "agent", 3),
        ("_all_tools.all_calls", "agent", 30),
    ]
    assert action(policy, "delete_account") is Action.HIDE
    assert action(policy, "unlisted") is Action.DENY


def test_intercept_validation_errors_are_positioned() -> None:
    with pytest.raises(PolicyError) as caught:
        load("intercept_testdata_invalid_schema.yaml")
    found = {(problem.line, problem.message) for problem in caught.value.problems}
    messages = " | ".join(message for _, message in sorted(found))
    for expected in (
        "unsupported policy version '2'",
        'invalid regex "[invalid("',
        "'lt' needs a number",
        "name must be a non-empty string",
        'unknown operator "unknown_op"',
        "path must start with",
        "needs a list of values",
        "deny rules must not have conditions",
        "evaluate rules must have at least one condition",
        'rate_limit count must be a positive integer, got "five"',
        "rate_limit cannot be combined with conditions or state",
        'rate_limit count must be a positive integer, got "0"',
        'rate_limit window must be "minute", "hour", or "day"',
        'rate_limit cannot be used with action "deny"',
    ):
        assert expected in messages, expected
    assert all(
        problem.source == "intercept_testdata_invalid_schema.yaml" for problem in caught.value.problems
    )
    assert all(problem.line > 1 for problem in caught.value.problems)


def test_a_counter_without_its_state_block_is_refused_where_it_is_read() -> None:
    text = (
        'version: "1"\ntools:\n  t:\n    rules:\n      - name: r\n        conditions:\n'
        '          - {path: "state.t.missing", op: "lte", value: 3}\n'
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(text, source="p.yaml")
    [problem] = caught.value.problems
    assert (problem.line, problem.message) == (
        7,
        "condition references state.t.missing but no matching state block found",
    )


def test_hosted_validation_errors_are_positioned() -> None:
    text = """{
  "version": "1",
  "default": "maybe",
  "tools": {
    "a": {"require": [{"path": "amount", "op": "gt", "value": 1}]},
    "b": {"deny_if": [{"conditions": [{"path": "args.x", "op": "like", "value": 1}]}]},
    "c": {"limits": [{"counter": "n", "window": "week", "max": 3}], "allow": true}
  }
}"""
    with pytest.raises(PolicyError) as caught:
        load_policy(text, source="p.json")
    assert [str(problem) for problem in caught.value.problems] == [
        "p.json:3:14: default must be 'allow' or 'deny', got the string \"maybe\"",
        "p.json:5:32: path must start with 'args.', got \"amount\"",
        'p.json:6:64: unknown operator "like" (operators: eq, neq, in, not_in, lt, lte, gt, gte, regex, contains, exists)',
        'p.json:7:49: window must be "minute", "hour", or "day", got the string "week"',
        "p.json:7:69: unknown key 'allow' for tool 'c' (keys: require, deny_if, limits)",
    ]


def test_a_fixed_increment_and_a_counter_bounded_from_another_rule() -> None:
    text = """
version: "1"
tools:
  send_email:
    rules:
      - name: "daily email budget"
        conditions:
          - {path: "args.to", op: "exists", value: true}
        state: {counter: "units", window: "day", increment: 5}
      - name: "cap"
        conditions:
          - {path: "state.send_email.units", op: "lte", value: 100}
        on_deny: "Email budget spent"
"""
    decision = load_policy(text).decide("send_email", arguments={"to": "a@b"})
    [units] = decision.limits
    assert units.counter == "send_email.units" and units.units({}) == 5 * 1_000_000
    assert units.bound == 100 and units.inclusive and units.reason == "Email budget spent"
    assert action(load_policy(text), "send_email") is Action.DENY  # "to" missing


def test_a_counter_bounded_by_another_operator_is_refused() -> None:
    text = (
        'version: "1"\ntools:\n  t:\n    rules:\n      - name: r\n        conditions:\n'
        '          - {path: "state.t.n", op: "gt", value: 3}\n'
        '        state: {counter: "n", window: "hour"}\n'
    )
    with pytest.raises(PolicyError, match='a counter can only be bounded with "lt" or "lte" here, got "gt"'):
        load_policy(text)
