"""How a held call reads: decisive fields first, then the agent's order, shapes, conditions with values."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broker.approvals.call_view import (
    FOLD_LIMIT,
    PREVIEW_CHARS,
    PREVIEW_LINES,
    SHORT_LIMIT,
    Shape,
    Waiting,
    call_view,
    recent_decisions,
)
from broker.approvals.model import Approval, ApprovalStatus, NewApproval
from broker.policy import PolicyError, load_policy
from tests.store.builders import as_stored

POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    id: big-orders
    when:
      args.quantity: {gt: 100}
      args.order.legs.0.side: SELL
    action: require_approval
  - tool: send_email
    id: outside-mail
    when: {"args.to": {not_in: ["ops@example.com"]}, "args.body": {contains: "wire"}}
    show_first: [subject, args.to]
    action: require_approval
  - tool: refund
    action: require_approval
    when:
      args.amount: {gte: 10, lte: 5000}
      args.note: {exists: false}
      args.currency: {in: [EUR, USD]}
      args.reason: {matches: "[a-z ]+"}
"""
CREATED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def held(tool: str, arguments: dict[str, Any], *, rule: str, revision: str) -> Approval:
    new = NewApproval(
        agent="trader",
        server="exchange",
        tool=tool,
        upstream_tool=tool,
        arguments=arguments,
        policy_revision=revision,
        rule=rule,
        rule_reason="held",
        timeout=timedelta(minutes=5),
    )
    return as_stored(
        new,
        approval_id="01JAPPROVAL0000000000000000",
        created_at=CREATED,
    )


def test_fields_keep_the_agents_order_with_the_conditions_fields_first() -> None:
    policy = load_policy(POLICY)
    order = {"symbol": "BTCUSD", "side": "buy", "price": 90000, "order": {"legs": [{"side": "SELL"}]}}
    approval = held("place_order", {**order, "quantity": 250}, rule="big-orders", revision=policy.revision)
    assert list(approval.arguments) == sorted(approval.arguments)  # stored canonical, sorted

    view = call_view(approval, policy)

    assert [field.name for field in view.fields] == ["quantity", "order", "symbol", "side", "price"]
    assert [field.decisive for field in view.fields] == [True, True, False, False, False]
    assert [condition.text for condition in view.hold.conditions] == [
        "quantity = 250 > 100",
        'order.legs.0.side = "SELL"',
    ]
    assert view.hold.policy_changed is None


def test_show_first_comes_before_the_condition_fields_and_accepts_paths() -> None:
    policy = load_policy(POLICY)
    mail = {"from": "bot@example.com", "to": "cfo@rival.example", "subject": "Q3", "body": "please wire it"}
    view = call_view(held("send_email", mail, rule="outside-mail", revision=policy.revision), policy)

    assert [field.name for field in view.fields] == ["subject", "to", "body", "from"]
    assert view.hold.show_first == ("subject", "to")
    assert [condition.text for condition in view.hold.conditions] == [
        'to = "cfo@rival.example", not one of ["ops@example.com"]',
        'body contains "wire"',
    ]


def test_every_operator_reads_with_the_value_it_saw() -> None:
    policy = load_policy(POLICY)
    refund = {"amount": "250.5", "currency": "EUR", "reason": "late delivery"}
    rule = next(rule for rule in policy.rules if rule.tool == "refund")
    view = call_view(held("refund", refund, rule=rule.name, revision=policy.revision), policy)
    assert [condition.text for condition in view.hold.conditions] == [
        'amount = "250.5" >= 10',
        'amount = "250.5" <= 5000',
        "note is missing",
        'currency = "EUR", one of ["EUR", "USD"]',
        'reason = "late delivery" matches "[a-z ]+"',
    ]
    assert all(condition.holds for condition in view.hold.conditions)


def test_a_changed_policy_marks_nothing_decisive_and_says_so() -> None:
    policy = load_policy(POLICY)
    approval = held(
        "place_order", {"symbol": "X", "quantity": 250}, rule="big-orders", revision="old-revision"
    )
    view = call_view(approval, policy)
    assert [field.name for field in view.fields] == ["symbol", "quantity"]
    assert not any(field.decisive for field in view.fields)
    assert view.hold.conditions == ()
    assert view.hold.policy_changed is not None
    assert "old-revision" in view.hold.policy_changed and policy.revision in view.hold.policy_changed


def test_approvals_stored_before_the_order_was_kept_read_in_key_order() -> None:
    approval = replace(held("x", {"b": 1, "a": 2, "c": 3}, rule="r", revision="r1"), argument_order=("c",))
    assert [field.name for field in call_view(approval, None).fields] == ["c", "a", "b"]


def test_shapes_short_multiline_and_long() -> None:
    arguments = {
        "to": "a@example.com",
        "flag": True,
        "empty": "",
        "note": "line one\nline two",
        "wide": "x" * (SHORT_LIMIT + 1),
        "legs": {f"leg {n}": f"buy {n} at the opening auction, limit 90000" for n in range(5)},
        "body": "\n".join(f"paragraph {n}: " + "words " * 20 for n in range(40)),
        "blob": "y" * (FOLD_LIMIT + 1),
    }
    view = call_view(held("x", arguments, rule="r", revision="r1"), None)
    shapes = {field.name: field.shape for field in view.fields}
    assert shapes == {
        "to": Shape.SHORT,
        "flag": Shape.SHORT,
        "empty": Shape.SHORT,
        "note": Shape.MULTILINE,
        "wide": Shape.MULTILINE,
        "legs": Shape.MULTILINE,
        "body": Shape.LONG,
        "blob": Shape.LONG,
    }
    texts = {field.name: field for field in view.fields}
    assert texts["note"].text == "line one\nline two"  # a line break, not a literal \n
    assert texts["flag"].text == "true" and texts["empty"].text == '""'
    assert texts["legs"].text.startswith('{\n  "leg 0": "buy 0 at')
    body = texts["body"]
    assert body.size == len(arguments["body"]) and body.text == arguments["body"]
    assert body.preview == "\n".join(arguments["body"].split("\n")[:PREVIEW_LINES])[:PREVIEW_CHARS]
    assert texts["blob"].preview == "y" * PREVIEW_CHARS
    assert [field.name for field in view.long_fields] == ["body", "blob"]
    assert texts["to"].to_json() == {
        "name": "to",
        "value": "a@example.com",
        "text": "a@example.com",
        "shape": "short",
        "decisive": False,
        "size": 13,
    }


def test_show_first_is_checked_with_positions() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(
            'version: "1"\nrules:\n  - tool: x\n    action: allow\n    show_first: [to]\n'
            "  - tool: y\n    action: require_approval\n    show_first: to\n"
            '  - tool: z\n    action: require_approval\n    show_first: [to, "args."]\n'
        )
    messages = [f"{problem.line}:{problem.column} {problem.message}" for problem in caught.value.problems]
    assert messages == [
        "5:5 'show_first' only applies to require_approval rules, and this rule is 'allow'",
        '8:17 show_first must be a list, e.g. show_first: ["to", "subject"]; got the string "to"',
        "11:22 show_first entry 'args.' names no argument",
    ]


def test_policy_explain_shows_show_first() -> None:
    policy = load_policy(POLICY)
    mail = {"to": "x@rival.example", "body": "wire"}
    rendered = policy.explain("send_email", arguments=mail).render()
    assert "show first: subject, to (then the rest in the agent's order)" in rendered


def test_waiting_and_recent_decisions() -> None:
    assert Waiting(1, 1, None).summary == "1 agent call; an agent is waiting for the answer now"
    assert Waiting(3, 0, CREATED).summary == (
        "3 identical agent calls; the agent was told to come back for the answer"
    )
    assert Waiting(1, 0, None).summary == "1 agent call; no agent is waiting on this broker process"
    base = held("x", {}, rule="r", revision="r1")
    others = [
        replace(base, id=f"A{n}", status=status)
        for n, status in enumerate(
            [ApprovalStatus.DENIED, ApprovalStatus.CANCELLED, *[ApprovalStatus.COMPLETED] * 6]
        )
    ]
    recent = recent_decisions(base, [base, *others])
    assert [approval.id for approval in recent] == ["A0", "A2", "A3", "A4", "A5"]
