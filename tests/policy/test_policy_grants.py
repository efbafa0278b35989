"""The ``grant`` setting and the pure grant rules: parsing with positioned refusals, the bounds an
approver's request must keep, the narrowest of several requests, and what explain and diff say."""

from __future__ import annotations

import pytest

from broker.approvals.grants import GrantRequest, GrantScope, narrowest, refusal
from broker.catalogue.diff import diff_policies, render_diff
from broker.catalogue.model import CatalogueTool
from broker.policy import PolicyError
from broker.policy.grants import GrantAllowance, grant_text
from broker.policy.loader import load_policy


def rule(extra: str) -> str:
    return f'version: "1"\nrules:\n  - tool: place_order\n    action: require_approval\n{extra}'


def approval_of(text: str):  # type: ignore[no-untyped-def]
    [compiled] = load_policy(text, source="policy.yaml").rules
    return compiled.approval


def test_the_full_setting_and_its_defaults() -> None:
    full = approval_of(rule("    grant: {max: 1h, max_calls: 20, scope: [identical, matching]}\n"))
    assert full.grant == GrantAllowance(3600, 20, ("identical", "matching"))
    short = approval_of(rule("    grant: {max: 30m}\n"))
    assert short.grant == GrantAllowance(1800, 10, ("identical",))
    assert approval_of(rule("")).grant is None
    budgeted = approval_of(
        rule('    grant: {max: 1h, budget: {sum: "args.quantity * args.price", max: 500}}\n')
    )
    assert budgeted.grant.budget.bound == 500 and budgeted.grant.budget.inclusive
    assert budgeted.grant.budget.units({"quantity": 2, "price": 1.5}) == 3_000_000
    assert "budget sum of args.quantity * args.price <= 500" in grant_text(budgeted.grant)


@pytest.mark.parametrize(
    ("extra", "position", "words"),
    [
        ("    grant: 1h\n", "policy.yaml:5:12", "must be a mapping"),
        ("    grant: {max_calls: 3}\n", "policy.yaml:5:12", "needs 'max'"),
        ("    grant: {max: -5}\n", "policy.yaml:5:18", "greater than zero"),
        ("    grant: {max: soon}\n", "policy.yaml:5:18", "not a duration"),
        ("    grant: {max: 1h, max_calls: 0}\n", "policy.yaml:5:33", "at least 1"),
        ("    grant: {max: 1h, max_calls: true}\n", "policy.yaml:5:33", "at least 1"),
        ("    grant: {max: 1h, scope: [similar]}\n", "policy.yaml:5:30", "one of identical, matching"),
        ("    grant: {max: 1h, scope: [matching, matching]}\n", "policy.yaml:5:40", "twice"),
        ("    grant: {max: 1h, scope: []}\n", "policy.yaml:5:29", "non-empty list"),
        ("    grant: {max: 1h, spend: 5}\n", "policy.yaml:5:22", "unknown key 'spend'"),
        ("    grant: {max: 1h, budget: 5}\n", "policy.yaml:5:30", "grant.budget must be a mapping"),
        ("    grant: {max: 1h, budget: {max: 5}}\n", "policy.yaml:5:30", "exactly one of 'sum"),
        (
            "    grant: {max: 1h, budget: {count: true, max: 5, window: 1h}}\n",
            "policy.yaml:5:52",
            "unknown key 'window'",
        ),
    ],
)
def test_bad_grants_are_positioned_errors(extra: str, position: str, words: str) -> None:
    with pytest.raises(PolicyError) as refused:
        load_policy(rule(extra), source="policy.yaml")
    message = str(refused.value)
    assert position in message and words in message, message


@pytest.mark.parametrize("action", ["allow", "deny"])
def test_grant_only_applies_to_require_approval_rules(action: str) -> None:
    text = f'version: "1"\nrules:\n  - tool: x\n    action: {action}\n    grant: {{max: 1h}}\n'
    with pytest.raises(PolicyError, match=r"policy\.yaml:5:5: 'grant' only applies to require_approval"):
        load_policy(text, source="policy.yaml")


ALLOWANCE = GrantAllowance(3600, 20, ("identical",))


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (GrantRequest(3601), "allows at most 60"),
        (GrantRequest(60, max_calls=21), "allows at most 20"),
        (GrantRequest(60, GrantScope.MATCHING), "only identical"),
    ],
)
def test_a_request_beyond_the_rule_is_refused(request_: GrantRequest, words: str) -> None:
    problem = refusal(request_, ALLOWANCE)
    assert problem is not None and words in problem
    assert "allows no grants" in (refusal(GrantRequest(60), None) or "")
    assert refusal(GrantRequest(3600, max_calls=20), ALLOWANCE) is None


def test_the_narrowest_request_wins_and_a_plain_yes_means_no_grant() -> None:
    wide = GrantRequest(3600, GrantScope.MATCHING, None)
    short = GrantRequest(600, GrantScope.MATCHING, 15)
    exact = GrantRequest(1800, GrantScope.IDENTICAL, 18)
    assert narrowest([wide], ALLOWANCE) == GrantRequest(3600, GrantScope.MATCHING, 20)
    assert narrowest([wide, short, exact], ALLOWANCE) == GrantRequest(600, GrantScope.IDENTICAL, 15)
    assert narrowest([wide, None], ALLOWANCE) is None
    assert narrowest([], ALLOWANCE) is None


def test_explain_and_diff_show_the_grant() -> None:
    before = load_policy(
        rule("    grant: {max: 1h, max_calls: 5, scope: [identical, matching]}\n"), source="a"
    )
    after = load_policy(rule("    grant: {max: 30m, max_calls: 5}\n"), source="b")
    explained = before.explain("place_order", agent="bot", arguments={}).render()
    assert "grant:     approvers may give a grant of up to 1h and 5 calls (identical, matching)" in explained
    changes = diff_policies(
        before, after, [CatalogueTool(server="", name="place_order", exposed_name="place_order")], agent="bot"
    )
    text = render_diff(changes)
    assert "grant of up to 1h and 5 calls (identical, matching)" in text
    assert "grant of up to 30m and 5 calls (identical)" in text
