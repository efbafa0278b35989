"""What the Slack messages say: escaping, long arguments, and every outcome."""

from __future__ import annotations

import html
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import anyio
import pytest

from broker.approvals import Approval, ApprovalStatus, NewApproval
from broker.channels.delivery.retry import RetrySchedule, worth_recording
from broker.channels.slack.blocks import SECTION_TEXT_LIMIT, approval_message, escape
from broker.channels.slack.notifier import slack_destination
from tests.e2e.harness import exchange_server
from tests.slack.fake_slack import FakeSlack, Message
from tests.slack.rig import slack_broker
from tests.store.builders import as_stored

pytestmark = pytest.mark.anyio

CREATED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def code_block(text: str) -> str:
    return text.split("```\n", 1)[1].rsplit("\n```", 1)[0]


def approval(status: ApprovalStatus = ApprovalStatus.PENDING, **changes: Any) -> Approval:
    new = NewApproval(
        agent="trader",
        server="exchange",
        tool="place_order",
        upstream_tool="place_order",
        arguments={"symbol": "BTCUSD", "quantity": 10},
        policy_revision="r1",
        rule="rules[1]",
        rule_reason="big orders",
        timeout=timedelta(minutes=5),
    )
    base = as_stored(
        new,
        approval_id="01JAPPROVAL0000000000000000",
        created_at=CREATED,
        status=status,
        decided_by="alice" if status is not ApprovalStatus.PENDING else None,
        decided_at=CREATED + timedelta(minutes=1) if status is not ApprovalStatus.PENDING else None,
        decided_via="slack" if status is not ApprovalStatus.PENDING else None,
    )
    return replace(base, **changes)


def mention(name: str | None) -> str:
    return f"<@U-{name}>"


def block(blocks: list[dict[str, Any]], block_id: str) -> dict[str, Any]:
    return next(each for each in blocks if each.get("block_id") == block_id)


def argument_texts(blocks: list[dict[str, Any]]) -> list[str]:
    """The texts of the argument sections: from the one with block_id "arguments" up to the buttons."""
    start = blocks.index(block(blocks, "arguments"))
    return [each["text"]["text"] for each in blocks[start:] if each["type"] == "section" and "text" in each]


async def test_arguments_cannot_mention_anyone(tmp_path: Path) -> None:
    hostile = {"note": "<!channel> ping <@U0ALICE> & <!subteam^S0RISK> ```</code>", "<!here>": "x"}
    async with FakeSlack() as fake, slack_broker(tmp_path, fake) as rig:
        with anyio.fail_after(20):
            opened = await rig.open_approval(arguments=hostile)
            message = await rig.message_of(opened)
            shown = block(message.blocks, "arguments")["text"]["text"]
            inside = code_block(shown)
            assert "<" not in inside and ">" not in inside
            assert "&lt;!channel&gt; ping &lt;@U0ALICE&gt; &amp; &lt;!subteam^S0RISK&gt;" in inside
            assert "```" not in inside  # cannot close the code block early either
            lines = html.unescape(inside).replace("\u200b", "").split("\n")
            assert lines == ["note     " + hostile["note"], "<!here>  x"]  # the agent's order, names aligned
            assert fake.replies == []


MAIL_POLICY = """
version: "1"
default: deny
rules:
  - tool: send_email
    id: outside-mail
    when: {"args.to": {not_in: ["ops@example.com"]}}
    show_first: [subject]
    action: require_approval
    timeout: 60
    channels: ["slack:#approvals"]
"""


async def test_a_five_kilobyte_email_body_leaves_to_and_subject_beside_the_buttons(tmp_path: Path) -> None:
    body = "\n".join(f"Line {n}: please wire the funds & confirm <today>." for n in range(110))
    assert len(body) > 5000
    mail = {"from": "bot@example.com", "body": body, "to": "cfo@rival.example", "subject": "Invoice 42"}
    async with FakeSlack() as fake, slack_broker(tmp_path, fake, policy=MAIL_POLICY) as rig:
        with anyio.fail_after(20):
            opened = await rig.open_approval(
                server="mail",
                tool="send_email",
                upstream_tool="send_email",
                arguments=mail,
                policy_revision=rig.broker.policy_file.holder.current.revision,
                rule="outside-mail",
                rule_reason="mail leaving the company",
                approvers=(),
                channels=("slack:#approvals",),
            )
            message = await rig.message_of(opened)
            blocks = message.history[0]["blocks"]  # the Block Kit JSON as posted to Slack
            assert blocks[-1]["type"] == "actions"
            held = block(blocks, "held")["elements"][0]["text"]
            assert 'because *to = "cfo@rival.example", not one of ["ops@example.com"]*' in held

            first, started = argument_texts(blocks)[:2]
            # Decisive (show_first, then the condition's) short fields first, whole, then the rest.
            lines = html.unescape(code_block(first)).split("\n")
            assert lines == ["subject  Invoice 42", "to       cfo@rival.example", "from     bot@example.com"]
            assert started.startswith(
                "*body*\n```\nLine 0: please wire the funds &amp; confirm &lt;today&gt;."
            )
            assert started.endswith(f"_Full value of `body` ({len(body):,} characters) in the thread._")
            assert all(len(text) <= SECTION_TEXT_LIMIT for text in argument_texts(blocks))

            confirm = blocks[-1]["elements"][0]["confirm"]["text"]["text"]
            assert "`body` only in part here, whole in the thread" in confirm
            assert len(confirm) <= 300

            def whole_body_posted() -> list[Message] | None:
                posted = "".join(code_block(reply.text) for reply in fake.replies)
                return fake.replies if html.unescape(posted) == body else None

            replies = await fake.wait_for(whole_body_posted)
            assert all(reply.thread_ts == message.ts for reply in replies)
            assert replies[0].text.startswith(
                f"Full value of `body` ({len(body):,} characters), part 1/{len(replies)}:"
            )
            trail = await rig.broker.store.audit_trail(opened.id)
            notified = next(record for record in trail if record.event == "notified")
            assert notified.details["thread_replies"] == len(replies)


async def test_the_message_rates_the_tool_and_shows_what_held_the_call(tmp_path: Path) -> None:
    async with FakeSlack() as fake, slack_broker(tmp_path, fake, servers=exchange_server()) as rig:
        with anyio.fail_after(60):
            opened = await rig.open_approval(
                arguments={"symbol": "BTCUSD", "side": "buy", "quantity": 250, "price": 90000},
                policy_revision=rig.broker.policy_file.holder.current.revision,
                rule="rules[1] 'place_order'",
            )
            message = await rig.message_of(opened)
            about = block(message.blocks, "about")["elements"][0]["text"]
            assert about.startswith(":red_circle: *financial · critical risk*")
            held = block(message.blocks, "held")["elements"][0]["text"]
            assert "because *quantity = 250 &gt; 5*" in held
            lines = html.unescape(code_block(block(message.blocks, "arguments")["text"]["text"])).split("\n")
            assert [line.split()[0] for line in lines] == ["quantity", "symbol", "side", "price"]
            confirm = message.blocks[-1]["elements"][0]["confirm"]["text"]["text"]
            assert "with the arguments shown in this message" in confirm


def test_a_short_message_claims_everything_was_shown_and_posts_no_thread() -> None:
    rendered = approval_message(approval(), mention=mention)
    confirm = rendered.blocks[-1]["elements"][0]["confirm"]["text"]["text"]
    assert "with the arguments shown in this message (SHA-256" in confirm
    assert rendered.thread_replies == []


def test_huge_arguments_stop_after_twenty_replies_and_point_to_the_api() -> None:
    rendered = approval_message(approval(arguments={"blob": "z" * 200_000}), mention=mention)
    assert len(rendered.thread_replies) == 21
    assert "are not shown here" in rendered.thread_replies[-1]
    assert "/api/approvals/01JAPPROVAL0000000000000000" in rendered.thread_replies[-1]
    confirm = rendered.blocks[-1]["elements"][0]["confirm"]["text"]["text"]
    assert "whole in the thread and the web inbox" in confirm


def test_hundreds_of_arguments_stay_within_slacks_limits() -> None:
    many = {f"field_{n:03}": "v" * 150 for n in range(1000)}
    rendered = approval_message(approval(arguments=many), mention=mention)
    assert len(rendered.blocks) <= 50
    assert all(len(each["text"]["text"]) <= SECTION_TEXT_LIMIT for each in rendered.blocks if "text" in each)
    assert "more arguments" in json.dumps(rendered.blocks) and rendered.thread_replies


@pytest.mark.parametrize(
    ("status", "changes", "header", "says"),
    [
        (
            ApprovalStatus.APPROVED,
            {},
            "Approved: place_order",
            "*Approved* by <@U-alice> at <!date^1772366460^",
        ),
        (ApprovalStatus.RELEASED, {}, "Approved: place_order", "Forwarding to `exchange`…"),
        (
            ApprovalStatus.COMPLETED,
            {"result": {"content": [{"type": "text", "text": "ok"}], "isError": False}},
            "Completed: place_order",
            ":heavy_check_mark: *Completed OK*",
        ),
        (
            ApprovalStatus.COMPLETED,
            {"result": {"content": [{"type": "text", "text": "insufficient <funds>"}], "isError": True}},
            "Completed: place_order",
            ":warning: *The tool reported an error:* insufficient &lt;funds&gt;",
        ),
        (
            ApprovalStatus.FAILED,
            {"result": {"content": [{"type": "text", "text": "upstream down"}], "isError": True}},
            "Failed: place_order",
            ":x: *Failed*: upstream down",
        ),
        (
            ApprovalStatus.DENIED,
            {"decision_reason": "no & never", "decided_via": "web"},
            "Denied: place_order",
            ":no_entry: *Denied* by <@U-alice> (via web) at <!date^1772366460^{date_short_pretty} {time}|"
            "2026-03-01 12:01 UTC>: no &amp; never",
        ),
        (ApprovalStatus.EXPIRED, {}, "Expired: place_order", ":hourglass: *Expired, auto-denied* at"),
        (ApprovalStatus.CANCELLED, {}, "Cancelled: place_order", "*Cancelled by the agent* at"),
        (
            ApprovalStatus.CANCELLED,
            {"decided_via": "policy", "decision_reason": "superseded: <b>policy</b> changed"},
            "Cancelled: place_order",
            "*Cancelled by the broker* at <!date^1772366460^{date_short_pretty} {time}|2026-03-01 12:01 UTC>: "
            "superseded: &lt;b&gt;policy&lt;/b&gt; changed",
        ),
    ],
)
def test_each_outcome_replaces_the_buttons(
    status: ApprovalStatus, changes: dict[str, Any], header: str, says: str
) -> None:
    rendered = approval_message(approval(status, **changes), mention=mention)
    assert rendered.blocks[0]["text"]["text"] == header
    assert [each["type"] for each in rendered.blocks] == [
        "header",
        "section",
        "context",
        "section",
        "section",
    ]
    assert says in rendered.blocks[-1]["text"]["text"]
    assert rendered.text.startswith(escape(header))
    fields = " ".join(field["text"] for field in rendered.blocks[1]["fields"])
    assert "Auto-deny" not in fields and "*Decided*" in fields


def test_an_outcome_unknown_says_it_may_have_run_and_what_to_check() -> None:
    unknown = approval(
        ApprovalStatus.OUTCOME_UNKNOWN,
        arguments={"symbol": "BTCUSD", "quantity": 10, "newClientOrderId": "<web-7>"},
        result={"content": [{"type": "text", "text": "server process exited with code -9"}], "isError": True},
    )

    rendered = approval_message(unknown, mention=mention)

    assert rendered.blocks[0]["text"]["text"] == "Outcome unknown: place_order"
    assert rendered.text.startswith("Outcome unknown: place_order")
    assert "actions" not in [block["type"] for block in rendered.blocks]
    says = rendered.blocks[-1]["text"]["text"]
    assert says.startswith(":white_check_mark: *Approved* by <@U-alice> at <!date^1772366460^")
    assert (
        ":question: *Outcome unknown — it may have run*: sent to `exchange`, and no answer came back "
        "(server process exited with code -9).\n"
        ":mag: Check upstream 'exchange' for this call before retrying (look for newClientOrderId=&lt;web-7&gt;); "
        "it was not re-sent."
    ) in says


def test_a_denial_reason_cannot_overflow_the_section() -> None:
    rendered = approval_message(approval(ApprovalStatus.DENIED, decision_reason="&" * 2000), mention=mention)
    assert len(rendered.blocks[-1]["text"]["text"]) <= SECTION_TEXT_LIMIT
    assert rendered.blocks[-1]["text"]["text"].endswith("&amp;…")


def test_rules_choose_the_slack_channel() -> None:
    assert slack_destination(approval(channels=("web", "slack:C0123")), "#default") == "C0123"
    assert slack_destination(approval(channels=("slack:#risk", "slack:#other")), "#default") == "#risk"
    assert slack_destination(approval(channels=("slack",)), "#default") == "#default"
    assert slack_destination(approval(channels=()), "#default") == "#default"
    assert slack_destination(approval(channels=()), None) is None
    assert slack_destination(approval(channels=("web",)), "#default") is None


def test_the_retry_schedule_backs_off_up_to_a_cap_and_never_gives_up() -> None:
    delays = list(islice(RetrySchedule().delays(), 1000))
    assert delays[:8] == [2, 4, 8, 16, 32, 64, 120, 120]
    assert set(delays[6:]) == {120}  # a day-long outage is still retried every two minutes
    assert RetrySchedule().delay(10**6) == 120
    assert list(islice(RetrySchedule(first_delay=1, max_delay=1).delays(), 3)) == [1, 1, 1]
    with pytest.raises(ValueError, match="first_delay <= max_delay"):
        RetrySchedule(first_delay=5, max_delay=1)


def test_a_long_outage_leaves_a_handful_of_failures_in_the_audit_trail() -> None:
    recorded = [attempt for attempt in range(1, 1000) if worth_recording(attempt)]
    assert recorded == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
