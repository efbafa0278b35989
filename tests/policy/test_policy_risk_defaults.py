"""`default: require_approval` and `risk_defaults`: parsing with positions, and decisions that only get stricter."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from broker.catalogue import classify_tool
from broker.policy import Action, PolicyError, load_policy
from broker.policy.risk_defaults import RISK_LEVELS, STRICTNESS

SEED = '{"version": "1", "default": "deny", "hide": ["binance_us_cust_cancel_order"]}'


def problems(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(PolicyError) as caught:
        load_policy(text)
    return [(problem.line, problem.column, problem.message) for problem in caught.value.problems]


def test_default_require_approval_holds_unnamed_tools_with_default_settings() -> None:
    policy = load_policy(
        'version: "1"\ndefault: require_approval\nrules:\n  - {tool: get_*, action: allow}\n'
    )
    decision = policy.decide("transfer")
    assert (decision.action, decision.rule) == (Action.REQUIRE_APPROVAL, "default")
    assert decision.approval is not None and decision.approval.timeout_seconds == 300
    assert policy.decide("get_ticker").action is Action.ALLOW
    assert policy.is_listed("transfer")
    assert policy.always_requires_approval("transfer")
    assert not policy.always_requires_approval("get_ticker")


def test_default_mapping_carries_approval_settings() -> None:
    policy = load_policy(
        'version: "1"\ndefault: {action: require_approval, timeout: 10m, approvers: ["@risk"], quorum: 2}\n'
    )
    approval = policy.decide("anything").approval
    assert approval is not None
    assert (approval.timeout_seconds, approval.approvers, approval.quorum) == (600, ("@risk",), 2)


def test_default_mistakes_are_positioned() -> None:
    assert problems('version: "1"\ndefault: {action: allow, timeout: 10}\n') == [
        (2, 26, "'timeout' only applies to require_approval rules, and this rule is 'allow'")
    ]
    assert problems('version: "1"\ndefault: {timeout: 10}\n') == [
        (2, 10, "default is missing 'action' ('allow', 'deny', 'require_approval')")
    ]
    assert problems('version: "1"\ndefault: {action: require_approval, timout: 10}\n') == [
        (2, 37, "unknown key 'timout' in default; did you mean 'timeout'?")
    ]


def test_the_policylayer_seed_keeps_working() -> None:
    policy = load_policy(SEED)
    assert policy.decide("binance_us_cust_cancel_order").action is Action.HIDE
    assert policy.decide("anything", risk="critical").rule == "default"
    assert not policy.rates_risk


RISKY = 'version: "1"\ndefault: allow\nrisk_defaults:\n  high: require_approval\n  critical: deny\n'


def test_a_risk_default_applies_only_when_no_rule_does() -> None:
    policy = load_policy(RISKY + "rules:\n  - {tool: withdraw, action: allow}\n")
    assert policy.decide("withdraw", risk="critical").rule == "rules[0] 'withdraw'"
    held = policy.decide("transfer", risk="high")
    assert (held.action, held.rule) == (
        Action.REQUIRE_APPROVAL,
        "default (risk: high \u2192 require_approval)",
    )
    assert "rates this tool high risk" in held.reason and held.approval is not None
    assert policy.decide("nuke", risk="critical").action is Action.DENY
    assert policy.decide("get_ticker", risk="low").rule == "default"
    assert policy.decide("unrated").rule == "default"


def test_an_entry_covers_the_levels_above_it_unless_they_say_stricter() -> None:
    policy = load_policy('version: "1"\ndefault: allow\nrisk_defaults: {medium: require_approval}\n')
    assert [policy.decide("t", risk=level).action for level in RISK_LEVELS] == [
        Action.ALLOW,
        Action.REQUIRE_APPROVAL,
        Action.REQUIRE_APPROVAL,
        Action.REQUIRE_APPROVAL,
    ]
    critical = policy.decide("t", risk="critical")
    assert critical.rule == "default (risk: critical \u2192 require_approval)"
    assert "the medium entry covers the levels above it" in critical.reason
    # A less strict entry above a stricter one does not loosen what the lower one says.
    policy = load_policy(
        'version: "1"\ndefault: allow\nrisk_defaults: {high: deny, critical: require_approval}\n'
    )
    assert policy.decide("t", risk="critical").action is Action.DENY


@pytest.mark.parametrize(
    ("default", "entries"),
    list(
        itertools.product(
            ["allow", "require_approval", "deny"],
            [
                {},
                {"low": "deny"},
                {"high": "require_approval"},
                {"medium": "deny", "critical": "require_approval"},
            ],
        )
    ),
)
def test_risk_never_loosens_the_default(default: str, entries: dict[str, str]) -> None:
    stricter = {
        level: action
        for level, action in entries.items()
        if STRICTNESS[Action(action)] > STRICTNESS[Action(default)]
    }
    body = "".join(f"  {level}: {action}\n" for level, action in stricter.items())
    policy = load_policy(f'version: "1"\ndefault: {default}\n' + (f"risk_defaults:\n{body}" if body else ""))
    for level in RISK_LEVELS:
        assert STRICTNESS[policy.decide("t", risk=level).action] >= STRICTNESS[Action(default)]
        assert policy.is_listed("t", risk=level) == (policy.decide("t", risk=level).action is not Action.DENY)


def test_a_looser_or_unknown_risk_entry_is_an_error() -> None:
    assert problems('version: "1"\ndefault: deny\nrisk_defaults:\n  critical: require_approval\n') == [
        (
            4,
            13,
            "risk_defaults.critical is require_approval, which is not stricter than the default deny: "
            "a risk default may only make the answer stricter (allow < require_approval < deny)",
        )
    ]
    assert problems('version: "1"\ndefault: allow\nrisk_defaults:\n  severe: deny\n') == [
        (4, 3, "unknown risk level 'severe' in risk_defaults (levels: low, medium, high, critical)")
    ]
    assert problems('version: "1"\nrisk_defaults: [critical]\n')[0][:2] == (2, 16)


def test_risk_default_listing_and_tasks() -> None:
    policy = load_policy(RISKY)
    assert not policy.is_listed("nuke", risk="critical")
    assert policy.is_listed("transfer", risk="high")
    assert policy.always_requires_approval("transfer", risk="high")
    assert not policy.always_requires_approval("transfer", risk="low")


def test_explain_says_which_default_applied() -> None:
    policy = load_policy(RISKY)
    text = policy.explain("transfer", risk="high").render()
    assert "decision:  require_approval by default (risk: high \u2192 require_approval)" in text
    assert (
        "default: allow (replaced by the stricter default (risk: high \u2192 require_approval); tool rated high risk)"
        in text
    )


def test_a_lying_read_only_hint_does_not_make_a_withdrawal_look_safe() -> None:
    definition = {
        "name": "aave_withdraw",
        "description": "Withdraw funds from the Aave pool to an address.",
        "inputSchema": {
            "type": "object",
            "properties": {"amount": {"type": "string"}, "to": {"type": "string"}},
        },
        "annotations": {"readOnlyHint": True},
    }
    rating = classify_tool(definition, "defi").risk.value
    assert rating in ("high", "critical")
    decision = load_policy(RISKY).decide("aave_withdraw", server="defi", risk=rating)
    assert decision.action is not Action.ALLOW


def test_the_readme_example_explains_as_the_readme_shows() -> None:
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Risk-aware defaults", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    policy_file = root / "policies/risk-defaults.yaml"
    assert policy_file.read_text(encoding="utf-8") in section.replace("# policies/risk-defaults.yaml\n", "")
    rendered = (
        load_policy(policy_file.read_bytes(), source=str(policy_file))
        .explain("place_order", risk="high")
        .render()
    )
    shown = [
        line.removeprefix("# ") for line in section.splitlines() if line.startswith("# ") and ":" in line
    ]
    for line in shown:
        if not line.startswith("policies/"):
            assert line in rendered.splitlines()
