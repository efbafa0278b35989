"""The ``escalate`` setting: one step or several, and every refusal with its position."""

from __future__ import annotations

import pytest

from broker.policy import PolicyError
from broker.policy.escalation import EscalationStep
from broker.policy.loader import load_policy


def rule(extra: str, timeout: str = "30m") -> str:
    return (
        f'version: "1"\nrules:\n  - tool: place_order\n    action: require_approval\n'
        f"    timeout: {timeout}\n{extra}"
    )


def approval_of(text: str):  # type: ignore[no-untyped-def]
    [compiled] = load_policy(text, source="policy.yaml").rules
    return compiled.approval


def test_one_step_is_a_mapping() -> None:
    text = rule(
        '    escalate: {after: 10m, to: ["@oncall-leads", "carol"], channels: ["slack:#escalations"]}\n'
    )
    assert approval_of(text).escalation == (
        EscalationStep(600.0, ("@oncall-leads", "carol"), ("slack:#escalations",), None),
    )


def test_several_steps_are_a_list_and_may_extend_the_deadline() -> None:
    text = rule(
        "    escalate:\n"
        '      - {after: 10m, to: ["@oncall-leads"]}\n'
        '      - {after: 25m, to: ["@cto"], extend: 30m}\n'
        '      - {after: 50m, channels: ["slack:#incidents"]}\n'
    )
    steps = approval_of(text).escalation
    assert [step.after_seconds for step in steps] == [600.0, 1500.0, 3000.0]
    assert [step.extend_seconds for step in steps] == [None, 1800.0, None]
    assert steps[2].to == () and steps[2].channels == ("slack:#incidents",)


def test_no_escalate_is_no_step() -> None:
    assert approval_of(rule("")).escalation == ()


def test_steps_round_trip_through_json() -> None:
    step = EscalationStep(60.0, ("@a",), ("slack:#x",), 120.0)
    assert EscalationStep.from_json(step.to_json()) == step


@pytest.mark.parametrize(
    ("extra", "position", "words"),
    [
        ('    escalate: {to: ["@leads"]}\n', "policy.yaml:6:15", "needs 'after'"),
        ('    escalate: {after: soon, to: ["@leads"]}\n', "policy.yaml:6:23", "not a duration"),
        ("    escalate: {after: 10m}\n", "policy.yaml:6:15", "'to'"),
        ('    escalate: {after: 10m, to: "@leads"}\n', "policy.yaml:6:32", "must be a list"),
        ('    escalate: {after: 10m, to: [""]}\n', "policy.yaml:6:33", "non-empty string"),
        ('    escalate: {after: 10m, to: ["@a"], extend: -5}\n', "policy.yaml:6:", "greater than zero"),
        ('    escalate: {after: 10m, to: ["@a"], notify: x}\n', "policy.yaml:6:", "unknown key 'notify'"),
        ("    escalate: []\n", "policy.yaml:6:15", "at least one step"),
        ("    escalate: later\n", "policy.yaml:6:15", "must be a mapping"),
        ('    escalate: {after: 30m, to: ["@leads"]}\n', "policy.yaml:6:15", "times out after 1800s"),
        (
            '    escalate:\n      - {after: 20m, to: ["@a"]}\n      - {after: 10m, to: ["@b"]}\n',
            "policy.yaml:8:9",
            "in order of 'after'",
        ),
        (
            # The second step is past the deadline: an earlier step would have to extend it.
            '    escalate:\n      - {after: 10m, to: ["@a"]}\n      - {after: 40m, to: ["@b"], extend: 1h}\n',
            "policy.yaml:8:9",
            "times out after 1800s",
        ),
    ],
)
def test_impossible_escalations_are_positioned_errors(extra: str, position: str, words: str) -> None:
    with pytest.raises(PolicyError) as refused:
        load_policy(rule(extra), source="policy.yaml")
    message = str(refused.value)
    assert position in message and words in message, message


def test_an_earlier_extension_makes_room_for_a_later_step() -> None:
    text = rule(
        '    escalate:\n      - {after: 10m, to: ["@a"], extend: 1h}\n      - {after: 40m, to: ["@b"]}\n'
    )
    assert len(approval_of(text).escalation) == 2


def test_escalate_only_applies_to_require_approval_rules() -> None:
    text = 'version: "1"\nrules:\n  - tool: x\n    action: allow\n    escalate: {after: 1m, to: ["@a"]}\n'
    with pytest.raises(PolicyError) as refused:
        load_policy(text, source="policy.yaml")
    assert "policy.yaml:5:5" in str(refused.value) and "only applies to require_approval" in str(
        refused.value
    )


def test_explain_and_diff_show_the_steps() -> None:
    from broker.catalogue.diff import DecisionSnapshot

    text = rule('    escalate: {after: 10m, to: ["@oncall-leads"], channels: ["slack:#esc"], extend: 15m}\n')
    policy = load_policy(text, source="policy.yaml")
    explanation = policy.explain("place_order", agent="bot", arguments={}).render()
    assert (
        "escalate:  after 600s; add approvers @oncall-leads; announce in slack:#esc; deadline +900s"
        in explanation
    )
    decision = policy.decide("place_order", agent="bot", arguments={})
    snapshot = DecisionSnapshot(decision.action, decision.rule, None, decision.approval, None)  # type: ignore[arg-type]
    assert "escalate after 600s" in snapshot.describe()
    assert snapshot.to_dict()["approval"]["escalate"][0]["to"] == ["@oncall-leads"]
    plain = load_policy(rule(""), source="policy.yaml").decide("place_order", agent="bot", arguments={})
    assert plain.approval != decision.approval  # policy diff compares the whole requirement
