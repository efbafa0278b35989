"""Approve with edits: the pure checks (editable fields, JSON types, the policy's second look), the
policy setting's positioned errors, and through the service on SQLite and PostgreSQL the binding to
the new arguments, an edit racing a plain yes, and a quorum whose earlier votes stop counting."""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
import pytest

from broker.approvals.edits import EditRefused, apply_edits, parse_text, redecide_refusal, type_problem
from broker.approvals.model import Approval, ApprovalStatus, Approver
from broker.approvals.ports import ArgumentsChanged, InvalidTransition
from broker.approvals.service import ApprovalService
from broker.approvals.verdict import Approve
from broker.policy import Policy, PolicyError, load_policy
from tests.store.builders import new_approval

from .conftest import CountingReleaser, RecordingListener, ServiceFactory, sqlite_only

pytestmark = pytest.mark.anyio

POLICY = """version: "1"
default: deny
rules:
  - tool: refund
    id: too-much
    action: deny
    when: {"args.amount": {"gt": 10000}}
  - tool: refund
    id: held
    action: require_approval
    editable: [amount, note]
    when: {"args.amount": {"gte": 100}}
  - tool: refund
    id: small
    action: allow
"""
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "order": {"type": "string"},
        "amount": {"type": "integer"},
        "note": {"type": "string"},
        "speed": {"enum": ["slow", "fast"]},
    },
}
ALICE, BOB, CAROL = (Approver(name) for name in ("alice", "bob", "carol"))


def held_approval(policy: Policy, **overrides: Any) -> Any:
    return new_approval(
        upstream_tool="refund",
        rule="held",
        policy_revision=policy.revision,
        editable=("amount", "note"),
        approvers=("*",),
        **overrides,
    )


def stored(**overrides: Any) -> Approval:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, tzinfo=UTC)
    fields: dict[str, Any] = {
        "id": "a-1",
        "status": ApprovalStatus.PENDING,
        "agent": "agent-1",
        "session_id": None,
        "server": "payments",
        "tool": "refund",
        "upstream_tool": "refund",
        "arguments": {"order": "A-17", "amount": 120},
        "arguments_hash": "0" * 64,
        "request_key": "1" * 64,
        "policy_revision": "r",
        "rule": "held",
        "rule_reason": "",
        "approvers": ("*",),
        "channels": (),
        "created_at": now,
        "expires_at": now,
        "version": 1,
        "editable": ("amount", "note"),
    }
    fields.update(overrides)
    return Approval(**fields)


# -- pure checks -------------------------------------------------------------------------------------


def test_only_editable_fields_change_and_the_refusal_names_the_field() -> None:
    with pytest.raises(
        EditRefused, match="'order' cannot be changed: the rule held lets approvers change only amount, note"
    ):
        apply_edits(stored(), {"order": "B-1"}, editable=("amount", "note"), input_schema=SCHEMA)
    with pytest.raises(EditRefused, match="lets approvers change no argument"):
        apply_edits(stored(), {"amount": 1}, editable=(), input_schema=None)
    with pytest.raises(EditRefused, match="non-empty JSON object"):
        apply_edits(stored(), {}, editable=("amount",), input_schema=None)
    with pytest.raises(EditRefused, match="non-empty JSON object"):
        apply_edits(stored(), [1], editable=("amount",), input_schema=None)


def test_an_edit_binds_new_canonical_arguments_and_lists_each_change() -> None:
    edit = apply_edits(
        stored(), {"amount": 100, "note": "half"}, editable=("amount", "note"), input_schema=SCHEMA
    )
    assert edit.arguments == {"amount": 100, "note": "half", "order": "A-17"}
    assert [change.text() for change in edit.changes] == ["amount 120 -> 100", 'note (not set) -> "half"']
    unchanged = apply_edits(stored(), {"amount": 120}, editable=("amount",), input_schema=SCHEMA)
    assert unchanged.changes == ()


def test_values_must_fit_the_tool_schema() -> None:
    with pytest.raises(EditRefused, match=r"'amount': must be integer, got string \"100\""):
        apply_edits(stored(), {"amount": "100"}, editable=("amount",), input_schema=SCHEMA)
    with pytest.raises(EditRefused, match=r"'amount': must be integer, got boolean true"):
        apply_edits(stored(), {"amount": True}, editable=("amount",), input_schema=SCHEMA)
    with pytest.raises(
        EditRefused,
        match=r"'colour' is not an argument of the tool 'refund' \(its arguments: amount, note, order, speed\)",
    ):
        apply_edits(stored(editable=("colour",)), {"colour": 1}, editable=("colour",), input_schema=SCHEMA)
    assert (
        type_problem("medium", SCHEMA["properties"]["speed"]) == 'must be one of "slow", "fast", got "medium"'
    )
    assert type_problem(2.5, {"type": ["integer", "null"]}) == "must be integer or null, got number 2.5"
    assert type_problem(None, {"type": ["integer", "null"]}) is None


def test_form_text_keeps_the_field_type() -> None:
    assert parse_text("100", {"type": "integer"}) == 100
    assert parse_text("100", {"type": "string"}) == "100"
    assert parse_text("100", None, old="7") == "100"
    assert parse_text("true", None, old=False) is True
    assert parse_text("not json", {"type": "integer"}) == "not json"  # and the type check refuses it


def test_the_policy_decides_the_edited_call_again() -> None:
    policy = load_policy(POLICY.encode(), source="p.yaml")

    def decide(amount: int) -> Any:
        return policy.decide(
            "refund", server="payments", agent="agent-1", arguments={"order": "A", "amount": amount}
        )

    approval = stored()
    assert redecide_refusal(approval, decide(150)) is None
    assert redecide_refusal(approval, decide(20000)) == (
        "the edited call would be denied by rule too-much (denied by policy); nothing was changed or approved"
    )
    assert redecide_refusal(approval, decide(50)) == (
        "the edited call would be decided by rule small (allow) instead of held, which held it; "
        "nothing was changed or approved"
    )
    hidden = load_policy(POLICY.replace("rules:", "hide: [refund]\nrules:").encode(), source="p.yaml")
    assert "would be hidden by rule hide[0] 'refund'" in (
        redecide_refusal(approval, hidden.decide("refund", server="payments", arguments={"amount": 150}))
        or ""
    )


@pytest.mark.parametrize(
    ("editable", "message"),
    [
        ("[]", "p.yaml:11:15: editable must be a non-empty list of argument names"),
        ("amount", "p.yaml:11:15: editable must be a non-empty list"),
        ("[args.amount]", "p.yaml:11:16: each entry of editable must be the name of a top-level argument"),
        ("[amount, amount]", "p.yaml:11:24: editable names 'amount' twice"),
    ],
)
def test_the_editable_setting_is_refused_with_its_position(editable: str, message: str) -> None:
    text = POLICY.replace("editable: [amount, note]", f"editable: {editable}")
    with pytest.raises(PolicyError) as refused:
        load_policy(text.encode(), source="p.yaml")
    assert message in str(refused.value)


def test_editable_applies_only_to_require_approval_rules() -> None:
    text = POLICY.replace("    action: allow\n", "    action: allow\n    editable: [amount]\n")
    with pytest.raises(
        PolicyError, match="'editable' only applies to require_approval rules, and this rule is 'allow'"
    ):
        load_policy(text.encode(), source="p.yaml")


# -- through the service, on every backend -------------------------------------------------------------


async def test_an_edit_binds_the_approval_and_the_identical_re_call_still_finds_it(
    service: ServiceFactory, releaser: CountingReleaser, listener: RecordingListener
) -> None:
    policy = load_policy(POLICY.encode(), source="p.yaml")
    async with service(policy=lambda: policy) as approvals:
        new = held_approval(policy)
        approval, _ = await approvals.open(new)
        decided = await approvals.decide(
            approval.id, Approve(edits={"amount": 100}), approver=ALICE, via="api"
        )
        assert decided.status is ApprovalStatus.APPROVED and decided.decided_by == "alice"
        assert decided.arguments == {"order": "A-17", "amount": 100}
        assert decided.original_arguments == {"order": "A-17", "amount": 120}
        assert decided.arguments_hash != approval.arguments_hash
        assert decided.request_key == approval.request_key and decided.edited_by == "alice"
        await listener.until(partial(completed, listener, approval.id))
        assert releaser.calls[0].arguments == {"order": "A-17", "amount": 100}
        again, created = await approvals.open(held_approval(policy))
        assert not created and again.id == approval.id
        trail = await approvals.store.audit_trail(approval.id)
        edited = next(record for record in trail if record.event == "edited")
        assert edited.details["from_sha256"] == approval.arguments_hash
        assert edited.details["to_sha256"] == decided.arguments_hash
        assert edited.details["changes"] == [{"field": "amount", "from": 120, "to": 100}]


@sqlite_only
async def test_a_refused_edit_changes_nothing(service: ServiceFactory) -> None:
    policy = load_policy(POLICY.encode(), source="p.yaml")
    async with service(policy=lambda: policy) as approvals:
        approval, _ = await approvals.open(held_approval(policy))
        for edits in ({"amount": 20}, {"amount": 20000}, {"order": "B"}):
            with pytest.raises(EditRefused):
                await approvals.decide(approval.id, Approve(edits=edits), approver=ALICE, via="api")
        after = await approvals.store.get(approval.id)
        assert after == approval


async def test_an_edit_racing_a_plain_yes_never_releases_arguments_nobody_approved(
    service: ServiceFactory, releaser: CountingReleaser, listener: RecordingListener
) -> None:
    policy = load_policy(POLICY.encode(), source="p.yaml")
    outcomes: set[str] = set()
    async with (
        service("replica-a", policy=lambda: policy) as a,
        service("replica-b", policy=lambda: policy) as b,
    ):
        for round_ in range(12):
            approval, _ = await a.open(
                held_approval(policy, arguments={"order": f"R-{round_}", "amount": 500})
            )
            results: dict[str, Any] = {}

            async def edit(replica: ApprovalService, approval: Approval, results: dict[str, Any]) -> None:
                try:
                    results["edit"] = await replica.decide(
                        approval.id, Approve(edits={"amount": 300}), approver=ALICE, via="web"
                    )
                except InvalidTransition as lost:
                    results["edit"] = lost

            async def plain(replica: ApprovalService, approval: Approval, results: dict[str, Any]) -> None:
                try:
                    results["plain"] = await replica.decide(
                        approval.id, Approve(seen_hash=approval.arguments_hash), approver=BOB, via="slack"
                    )
                except InvalidTransition as lost:
                    results["plain"] = lost

            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    group.start_soon(edit, (a, b)[round_ % 2], approval, results)
                    group.start_soon(plain, (b, a)[round_ % 2], approval, results)
                await listener.until(partial(completed, listener, approval.id))
            winners = [name for name, result in results.items() if not isinstance(result, InvalidTransition)]
            assert len(winners) == 1, results
            final = await a.store.get(approval.id)
            assert final is not None
            forwarded = [call.arguments for call in releaser.calls if call.id == approval.id]
            if winners == ["edit"]:
                assert final.decided_by == "alice" and forwarded == [{"order": f"R-{round_}", "amount": 300}]
                assert (
                    isinstance(results["plain"], ArgumentsChanged)
                    or results["plain"].current.status is not ApprovalStatus.PENDING
                )
            else:
                assert final.decided_by == "bob" and forwarded == [{"order": f"R-{round_}", "amount": 500}]
                assert not final.is_edited
            outcomes.update(winners)
    assert outcomes  # which side wins each round is up to the database


async def test_under_a_quorum_votes_for_the_old_arguments_stop_counting(
    service: ServiceFactory, releaser: CountingReleaser, listener: RecordingListener
) -> None:
    policy = load_policy(
        POLICY.replace("    editable:", "    quorum: 2\n    editable:").encode(), source="p.yaml"
    )
    async with service(policy=lambda: policy) as approvals:
        approval, _ = await approvals.open(held_approval(policy, quorum=2))
        first = await approvals.decide(
            approval.id, Approve(seen_hash=approval.arguments_hash), approver=ALICE, via="web"
        )
        assert [vote.approver for vote in first.votes] == ["alice"]
        edited = await approvals.decide(approval.id, Approve(edits={"amount": 150}), approver=BOB, via="api")
        assert edited.status is ApprovalStatus.PENDING
        assert [vote.approver for vote in edited.votes] == ["bob"]
        with pytest.raises(ArgumentsChanged, match="changed by bob since you looked"):
            await approvals.decide(
                approval.id, Approve(seen_hash=approval.arguments_hash), approver=ALICE, via="web"
            )
        with pytest.raises(ArgumentsChanged):
            await approvals.decide(
                approval.id,
                Approve(edits={"amount": 140}, seen_hash=approval.arguments_hash),
                approver=CAROL,
                via="web",
            )
        # A second edit starts the count again, and the agent's original arguments are kept.
        again = await approvals.decide(approval.id, Approve(edits={"amount": 140}), approver=CAROL, via="web")
        assert [vote.approver for vote in again.votes] == ["carol"]
        assert again.original_arguments == {"order": "A-17", "amount": 120} and again.edited_by == "carol"
        decided = await approvals.decide(
            approval.id, Approve(seen_hash=again.arguments_hash), approver=ALICE, via="web"
        )
        assert decided.status is ApprovalStatus.APPROVED
        assert set((decided.decided_by or "").split(", ")) == {"carol", "alice"}
        await listener.until(partial(completed, listener, approval.id))
        assert releaser.calls[-1].arguments == {"order": "A-17", "amount": 140}


def completed(listener: RecordingListener, approval_id: str) -> bool:
    return bool(listener.updates(approval_id, ApprovalStatus.COMPLETED))
