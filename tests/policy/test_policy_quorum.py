"""The ``quorum`` setting: both spellings, and every refusal with its position."""

from __future__ import annotations

import pytest

from broker.policy import PolicyError
from broker.policy.loader import load_policy


def rule(extra: str) -> str:
    return f'version: "1"\nrules:\n  - tool: place_order\n    action: require_approval\n{extra}'


def approval_of(text: str):  # type: ignore[no-untyped-def]
    [compiled] = load_policy(text, source="policy.yaml").rules
    return compiled.approval


def test_a_number_asks_for_that_many_distinct_approvers() -> None:
    requirement = approval_of(rule("    quorum: 2\n"))
    assert (requirement.quorum, requirement.quorum_from) == (2, ())


def test_a_mapping_names_groups_that_each_need_an_approver() -> None:
    text = rule(
        '    approvers: ["@risk", "@trading"]\n    quorum: {approvals: 2, from: ["@risk", "@trading"]}\n'
    )
    requirement = approval_of(text)
    assert (requirement.quorum, requirement.quorum_from) == (2, ("@risk", "@trading"))
    assert approval_of(rule('    quorum: {from: ["@risk", "@trading"]}\n')).quorum == 2


def test_no_quorum_is_one_decision() -> None:
    assert approval_of(rule("")).quorum == 1


@pytest.mark.parametrize(
    ("extra", "position", "words"),
    [
        ("    quorum: 0\n", "policy.yaml:5:13", "at least 1"),
        ("    quorum: two\n", "policy.yaml:5:13", "at least 1"),
        ('    quorum: {approvals: 1, from: ["@risk", "@ops"]}\n', "policy.yaml:5:", "each group needs"),
        (
            '    approvers: ["@risk"]\n    quorum: {from: ["@ops"]}\n',
            "policy.yaml:6:",
            "not among the rule's approvers",
        ),
        ('    approvers: ["alice", "bob"]\n    quorum: 3\n', "policy.yaml:6:13", "name only 2"),
        ('    quorum: {from: ["risk"]}\n', "policy.yaml:5:", "group like '@risk'"),
        ("    quorum: {approvals: 2, of: 3}\n", "policy.yaml:5:", "unknown key 'of'"),
    ],
)
def test_impossible_quorums_are_positioned_errors(extra: str, position: str, words: str) -> None:
    with pytest.raises(PolicyError) as refused:
        load_policy(rule(extra), source="policy.yaml")
    message = str(refused.value)
    assert position in message and words in message, message


def test_quorum_only_applies_to_require_approval_rules() -> None:
    text = 'version: "1"\nrules:\n  - tool: x\n    action: allow\n    quorum: 2\n'
    with pytest.raises(PolicyError, match="only applies to require_approval"):
        load_policy(text, source="policy.yaml")
