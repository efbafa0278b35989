"""Policy.decide / is_listed / explain: precedence, hiding, defaults, revisions, and the candidate cache."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from broker.policy import Action, ApprovalRequirement, Outcome, Policy, RateLimit, load_policy
from broker.policy import engine as engine_module


def policy_with(*rules: str, default: str = "deny", hide: str = "[]") -> Policy:
    body = "".join(f"  - {rule}\n" for rule in rules)
    return load_policy(f'version: "1"\ndefault: {default}\nhide: {hide}\nrules:\n{body}')


# --- precedence -----------------------------------------------------------------------------------


def test_exact_name_beats_any_glob_whatever_the_order() -> None:
    policy = policy_with(
        "{tool: '*', action: allow}", "{tool: 'get_*', action: allow}", "{tool: get_ticker, action: deny}"
    )
    assert policy.decide("get_ticker").rule == "rules[2] 'get_ticker'"
    assert policy.decide("get_balances").rule == "rules[1] 'get_*'"
    assert policy.decide("transfer_erc20").rule == "rules[0] '*'"


def test_globs_rank_by_literal_characters() -> None:
    policy = policy_with(
        "{tool: 'get_*', action: allow}",
        "{tool: 'get_token_*', action: deny}",
        "{tool: '*_price', action: require_approval}",
        "{tool: 'g?t_[tx]oken_pri*', action: allow, id: bracketed}",
    )
    assert policy.decide("get_ticker").rule == "rules[0] 'get_*'"
    assert policy.decide("get_token_supply").rule == "rules[1] 'get_token_*'"
    # 'get_token_*' has 10 literal characters, '*_price' 6, 'g?t_[tx]oken_pri*' 11.
    assert policy.decide("get_token_price").rule == "bracketed"
    assert policy.decide("set_token_price").rule == "rules[2] '*_price'"


def test_qualified_exact_beats_bare_exact_beats_globs() -> None:
    policy = policy_with(
        "{tool: 'exchange__*', action: allow}",
        "{tool: cancel_order, action: require_approval}",
        "{tool: exchange__cancel_order, action: deny}",
    )
    assert policy.decide("cancel_order", server="exchange").rule == "rules[2] 'exchange__cancel_order'"
    assert policy.decide("cancel_order", server="paper").rule == "rules[1] 'cancel_order'"
    assert policy.decide("cancel_order").rule == "rules[1] 'cancel_order'"
    assert policy.decide("get_ticker", server="exchange").rule == "rules[0] 'exchange__*'"
    assert policy.decide("get_ticker", server="paper").rule == "default"
    assert policy.decide("get_ticker").rule == "default"


def test_a_qualified_glob_ranks_by_its_literal_characters_like_any_glob() -> None:
    policy = policy_with("{tool: 'exchange__*', action: deny}", "{tool: 'get_ticker*', action: allow}")
    # 'exchange__*' has 10 literal characters, 'get_ticker*' has 10 too: the earlier rule wins the tie.
    assert policy.decide("get_ticker", server="exchange").rule == "rules[0] 'exchange__*'"
    policy = policy_with("{tool: 'exchange__*', action: deny}", "{tool: 'get_ticker_*', action: allow}")
    assert policy.decide("get_ticker_btc", server="exchange").rule == "rules[1] 'get_ticker_*'"


def test_agent_scoped_rules_beat_unscoped_ones_at_equal_specificity() -> None:
    policy = policy_with(
        "{tool: place_order, action: require_approval}",
        "{tool: place_order, agents: [trading-bot, 'paper-*'], action: allow}",
    )
    assert policy.decide("place_order", agent="trading-bot").action is Action.ALLOW
    assert policy.decide("place_order", agent="paper-7").action is Action.ALLOW
    assert policy.decide("place_order", agent="chat-bot").action is Action.REQUIRE_APPROVAL
    assert policy.decide("place_order").action is Action.REQUIRE_APPROVAL


def test_an_unscoped_exact_rule_still_beats_a_scoped_glob() -> None:
    policy = policy_with(
        "{tool: 'place_*', agents: [trading-bot], action: allow}", "{tool: place_order, action: deny}"
    )
    assert policy.decide("place_order", agent="trading-bot").action is Action.DENY
    assert policy.decide("place_limit", agent="trading-bot").action is Action.ALLOW


def test_conditional_rules_beat_unconditional_ones_and_agents_come_first() -> None:
    policy = policy_with(
        "{tool: t, action: allow, id: plain}",
        "{tool: t, when: {args.x: {exists: true}}, action: deny, id: conditional}",
        "{tool: t, agents: [a], action: allow, id: scoped}",
        "{tool: t, agents: [a], when: {args.x: {exists: true}}, action: require_approval, id: both}",
    )
    assert policy.decide("t", agent="a", arguments={"x": 1}).rule == "both"
    assert policy.decide("t", agent="a", arguments={}).rule == "scoped"
    assert policy.decide("t", agent="b", arguments={"x": 1}).rule == "conditional"
    assert policy.decide("t", agent="b").rule == "plain"


def test_earlier_rule_wins_a_complete_tie() -> None:
    policy = policy_with(
        "{tool: 'get_*', action: deny, id: first}", "{tool: 'get_*', action: allow, id: second}"
    )
    assert policy.decide("get_x").rule == "first"


# --- hide and default -----------------------------------------------------------------------------


def test_hidden_tools_are_hidden_before_any_rule_is_consulted() -> None:
    policy = policy_with(
        "{tool: binance_us_cust_cancel_order, action: allow}",
        hide="[binance_us_cust_cancel_order, 'admin_*', 'exchange__debug']",
    )
    decision = policy.decide("binance_us_cust_cancel_order", agent="a")
    assert (decision.action, decision.rule, decision.reason) == (
        Action.HIDE,
        "hide[0] 'binance_us_cust_cancel_order'",
        "hidden by policy",
    )
    assert not decision.forwards
    assert policy.decide("admin_keys").rule == "hide[1] 'admin_*'"
    assert policy.decide("debug", server="exchange").rule == "hide[2] 'exchange__debug'"
    assert policy.decide("debug", server="other").action is Action.DENY


def test_the_first_matching_hide_entry_is_named() -> None:
    policy = policy_with(hide="['admin_*', admin_keys, '*']")
    assert policy.decide("admin_keys").rule == "hide[0] 'admin_*'"
    assert policy.decide("zzz").rule == "hide[2] '*'"


@pytest.mark.parametrize("default", ["allow", "deny"])
def test_no_matching_rule_falls_to_the_default(default: str) -> None:
    policy = policy_with("{tool: other, action: require_approval}", default=default)
    decision = policy.decide("get_ticker")
    assert decision.action is Action(default)
    assert decision.rule == "default"
    assert decision.reason == f"no rule matches; default is {default}"
    assert decision.rate_limit is None
    assert decision.approval is None


# --- what a decision carries ----------------------------------------------------------------------


def test_decisions_carry_rate_limit_approval_reason_and_revision() -> None:
    policy = policy_with(
        "{tool: 'get_*', action: allow, rate_limit: {max: 60, window: 1m}}",
        "{tool: cancel, action: require_approval, timeout: 30s, approvers: [alice], channels: [web], "
        "reason: why}",
        "{tool: withdraw, action: deny}",
    )
    getter = policy.decide("get_ticker")
    assert getter.rate_limit == RateLimit(max_calls=60, window_seconds=60.0)
    assert getter.approval is None
    assert getter.forwards
    cancel = policy.decide("cancel")
    assert cancel.approval == ApprovalRequirement(
        timeout_seconds=30.0, approvers=("alice",), channels=("web",)
    )
    assert cancel.reason == "why"
    assert not cancel.forwards
    assert policy.decide("withdraw").reason == "denied by policy"
    assert {getter.revision, cancel.revision} == {policy.revision}


def test_rate_limit_on_a_require_approval_rule_rides_along() -> None:
    policy = policy_with("{tool: t, action: require_approval, rate_limit: {max: 2, window: 10}}")
    decision = policy.decide("t")
    assert decision.rate_limit == RateLimit(2, 10.0)
    assert decision.approval == ApprovalRequirement()


def test_a_rule_hands_out_the_same_decision_object_every_time() -> None:
    policy = policy_with("{tool: t, action: allow}")
    assert policy.decide("t") is policy.decide("t", agent="someone", arguments={"a": 1})


def test_revision_is_a_hash_of_the_exact_text() -> None:
    text = 'version: "1"\nrules:\n  - {tool: t, action: allow}\n'
    assert load_policy(text).revision == load_policy(text).revision
    assert load_policy(text).revision == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert load_policy(text + "# a comment\n").revision != load_policy(text).revision
    assert len(load_policy(text).revision) == 12


# --- listing --------------------------------------------------------------------------------------


def test_is_listed() -> None:
    policy = policy_with(
        "{tool: 'get_*', action: allow}",
        "{tool: withdraw, action: deny}",
        "{tool: place_order, when: {args.quantity: {gt: 1000}}, action: deny}",
        "{tool: place_order, action: require_approval}",
        "{tool: transfer, when: {args.to: {eq: treasury}}, action: allow}",
        "{tool: transfer, action: deny}",
        "{tool: get_secret, action: deny}",
        "{tool: bot_only, agents: [bot], action: allow}",
        hide="[get_admin]",
    )
    assert policy.is_listed("get_ticker")
    assert not policy.is_listed("get_admin")
    assert not policy.is_listed("withdraw")
    assert not policy.is_listed("get_secret")
    assert not policy.is_listed("unknown_tool")
    assert policy.is_listed("place_order")
    assert policy.is_listed("transfer")
    assert policy.is_listed("bot_only", agent="bot")
    assert not policy.is_listed("bot_only", agent="other")
    assert not policy.is_listed("bot_only")


def test_is_listed_under_default_allow() -> None:
    policy = policy_with(
        "{tool: withdraw, action: deny}",
        "{tool: send, when: {args.amount: {gt: 5}}, action: deny}",
        default="allow",
    )
    assert policy.is_listed("anything")
    assert not policy.is_listed("withdraw")
    assert policy.is_listed("send")


def test_always_requires_approval_only_when_no_arguments_escape_the_hold() -> None:
    policy = policy_with(
        "{tool: cancel_order, action: require_approval}",
        "{tool: place_order, when: {args.quantity: {gt: 5}}, action: require_approval}",
        "{tool: place_order, action: allow}",
        "{tool: amend_order, when: {args.quantity: {lt: 5}}, action: allow}",
        "{tool: amend_order, action: require_approval}",
        "{tool: transfer, when: {args.to: {eq: treasury}}, action: require_approval}",
        "{tool: transfer, action: require_approval, reason: every transfer}",
        "{tool: sweep, agents: [ops], action: allow}",
        "{tool: sweep, action: require_approval}",
        hide="[cancel_hidden]",
    )
    assert policy.always_requires_approval("cancel_order")
    assert not policy.always_requires_approval("place_order")
    assert not policy.always_requires_approval("amend_order")
    assert policy.always_requires_approval("transfer")
    assert policy.always_requires_approval("sweep", agent="bot")
    assert not policy.always_requires_approval("sweep", agent="ops")
    assert not policy.always_requires_approval("cancel_hidden")
    assert not policy.always_requires_approval("unknown_tool")


# --- explain --------------------------------------------------------------------------------------

EXPLAINED = """\
version: "1"
hide: ["admin_*"]
rules:
  - tool: "*"
    action: deny
  - tool: place_order
    id: big-orders
    agents: [trading-bot]
    when: {"args.quantity": {gt: 100}}
    action: require_approval
    rate_limit: {max: 5, window: 60}
  - tool: place_order
    id: orders
    action: allow
  - tool: get_ticker
    action: allow
"""


@pytest.mark.parametrize(
    ("tool", "server", "agent", "arguments"),
    [
        ("place_order", None, "trading-bot", {"quantity": 500}),
        ("place_order", "exchange", "trading-bot", {"quantity": 5}),
        ("place_order", None, "chat-bot", {"quantity": 500}),
        ("place_order", None, None, None),
        ("get_ticker", None, None, None),
        ("admin_keys", None, "trading-bot", None),
        ("zzz", None, None, None),
    ],
)
def test_explain_reaches_the_same_decision_as_decide(
    tool: str, server: str | None, agent: str | None, arguments: dict[str, Any] | None
) -> None:
    policy = load_policy(EXPLAINED)
    explanation = policy.explain(tool, server=server, agent=agent, arguments=arguments)
    assert explanation.decision == policy.decide(tool, server=server, agent=agent, arguments=arguments)
    assert len(explanation.rules) == len(policy.rules)


def test_explain_says_why_each_rule_did_or_did_not_apply() -> None:
    policy = load_policy(EXPLAINED)
    explanation = policy.explain("place_order", agent="trading-bot", arguments={"quantity": 500})
    assert explanation.winner is not None
    assert explanation.winner.name == "big-orders"
    outcomes = [(trace.rule.name, trace.outcome) for trace in explanation.rules]
    assert outcomes == [
        ("big-orders", Outcome.APPLIED),
        ("orders", Outcome.OUTRANKED),
        ("rules[0] '*'", Outcome.OUTRANKED),
        ("rules[3] 'get_ticker'", Outcome.TOOL_MISMATCH),
    ]
    text = explanation.render()
    assert "decision:  require_approval by big-orders" in text
    assert "-> 1. big-orders (line 6, require_approval): exact name; APPLIED" in text
    assert "when args.quantity gt 100: holds (args.quantity = 500)" in text
    assert "agents ['trading-bot']: 'trading-bot' is in scope" in text
    assert "rate limit: 5 calls per 60s" in text
    assert "1 other rule does not match this tool" in text
    assert "default: deny (not used)" in text


def test_explain_reports_failed_conditions_and_agents() -> None:
    policy = load_policy(EXPLAINED)
    small = policy.explain("place_order", agent="trading-bot", arguments={"quantity": 5})
    assert small.rules[0].outcome is Outcome.CONDITION_FAILED
    assert "when args.quantity gt 100: does not hold (args.quantity = 5)" in small.render()
    assert "-> 2. orders" in small.render()
    stranger = policy.explain("place_order", agent="chat-bot", arguments={})
    assert stranger.rules[0].outcome is Outcome.AGENT_NOT_IN_SCOPE
    assert "'chat-bot' is not in scope" in stranger.render()
    assert "args.quantity is missing" in stranger.render()


def test_explain_of_a_hidden_tool_and_of_the_default() -> None:
    policy = load_policy(EXPLAINED)
    hidden = policy.explain("admin_keys")
    assert [trace.outcome for trace in hidden.rules if trace.outcome is not Outcome.TOOL_MISMATCH] == [
        Outcome.NOT_CONSULTED
    ]
    assert "hide: hide[0] 'admin_*' (line 2) matches: the tool is hidden" in hidden.render()
    no_rules = load_policy('version: "1"\ndefault: allow\n').explain("x", server="s")
    assert "no rule names this tool" in no_rules.render()
    assert "default: allow (used: no rule applies)" in no_rules.render()
    assert "call:      s__x (tool 'x' on server 's')" in no_rules.render()


# --- the candidate cache --------------------------------------------------------------------------


def test_the_candidate_cache_stays_bounded_and_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "CANDIDATE_CACHE_SIZE", 8)
    policy = policy_with(
        "{tool: 'get_*', action: allow}", "{tool: t, when: {args.x: {eq: 1}}, action: allow}"
    )
    for round_ in range(3):
        for number in range(20):
            assert policy.decide(f"get_{number}").action is Action.ALLOW
            assert policy.decide(f"other_{number}", server=f"s{round_}").action is Action.DENY
            assert policy.decide("t", arguments={"x": number % 2}).action is Action(
                "allow" if number % 2 == 1 else "deny"
            )
            assert len(policy._candidates) <= 8


@pytest.mark.parametrize(
    ("approvers", "says"),
    [
        ("", "approvers: any approver (none named; approvals.default_approvers applies"),
        ('approvers: ["*"],', "approvers: any approver;"),
        ('approvers: [alice, "@leads"],', "approvers: alice, @leads;"),
    ],
)
def test_explain_says_any_approver_when_that_is_what_it_means(approvers: str, says: str) -> None:
    policy = load_policy(
        f'{{version: "1", rules: [{{tool: cancel, action: require_approval, {approvers} timeout: 30}}]}}'
    )
    assert says in policy.explain("cancel").render()
