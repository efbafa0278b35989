"""Block Kit for approvals: the prompt with its buttons, the outcome that replaces them, the deny modal.

Everything an agent or upstream controls (arguments, results, reasons) is escaped the way Slack
asks (``&``, ``<``, ``>``), so an argument such as ``<!channel>`` or ``<@U123>`` shows as text
and never pings anyone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.approvals import outcomes
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.quorum import progress_text
from broker.approvals.service import POLICY_ACTOR

SECTION_TEXT_LIMIT = 3000
"""Slack refuses a section whose text is longer than this."""
HEADER_TEXT_LIMIT = 150
MAX_THREAD_REPLIES = 20
"""Arguments beyond this many thread replies (about 60 kB) are left to the web inbox and the API."""

APPROVE_ACTION = "broker_approve"
DENY_ACTION = "broker_deny"
DENY_MODAL = "broker_deny_reason"
REASON_BLOCK = "reason"
REASON_INPUT = "reason"
REASON_MAX_LENGTH = 2000

Mention = Callable[[str | None], str]
"""How a person who decided is shown: a Slack mention when we know their user id, else their name."""


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_date(moment: datetime) -> str:
    """A date every reader sees in their own time zone, with a UTC fallback for old clients."""
    fallback = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


@dataclass(frozen=True, slots=True)
class ApprovalMessage:
    text: str
    """Notification text (and what clients without Block Kit show)."""
    blocks: list[dict[str, Any]]
    thread_replies: list[str] = field(default_factory=list)
    """The full arguments, when the message itself could only show the start of them."""


def approval_message(approval: Approval, *, mention: Mention) -> ApprovalMessage:
    """The message for an approval as it stands: a prompt while pending, its outcome afterwards."""
    arguments_block, replies = _arguments(approval)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(_clip(_headline(approval), HEADER_TEXT_LIMIT))},
        {
            "type": "section",
            "fields": [
                _mrkdwn(f"*Agent*\n{escape(approval.agent)}"),
                _mrkdwn(f"*Upstream server*\n{escape(approval.server)}"),
                _mrkdwn(f"*Requested*\n{slack_date(approval.created_at)}"),
                _mrkdwn(f"*Auto-deny*\n{slack_date(approval.expires_at)}"),
            ],
        },
        arguments_block,
        {
            "type": "context",
            "elements": [
                _mrkdwn(
                    f"Rule `{escape(_clip(approval.rule, 200))}`: {_escaped_within(approval.rule_reason, 500)} · "
                    f"approval `{approval.id}`"
                    + (f" · {escape(votes)}" if (votes := progress_text(approval)) else "")
                )
            ],
        },
    ]
    if approval.status is ApprovalStatus.PENDING:
        blocks.append(_buttons(approval))
    else:
        blocks.append(
            {"type": "section", "block_id": "outcome", "text": _mrkdwn(outcome_text(approval, mention))}
        )
    return ApprovalMessage(text=_notification(approval), blocks=blocks, thread_replies=replies)


def _headline(approval: Approval) -> str:
    labels = {
        ApprovalStatus.PENDING: "Approval needed",
        ApprovalStatus.APPROVED: "Approved",
        ApprovalStatus.RELEASED: "Approved",
        ApprovalStatus.COMPLETED: "Completed",
        ApprovalStatus.FAILED: "Failed",
        ApprovalStatus.DENIED: "Denied",
        ApprovalStatus.EXPIRED: "Expired",
        ApprovalStatus.CANCELLED: "Cancelled",
        ApprovalStatus.OUTCOME_UNKNOWN: "Outcome unknown",
    }
    return f"{labels[approval.status]}: {approval.tool}"


def _notification(approval: Approval) -> str:
    return escape(f"{_headline(approval)} (agent {approval.agent}, server {approval.server})")


def outcome_text(approval: Approval, mention: Mention) -> str:
    """What happened to the approval, in the words that replace the buttons."""
    at = slack_date(approval.decided_at) if approval.decided_at is not None else "an unknown time"
    decider = mention(approval.decided_by)
    via = f" (via {escape(approval.decided_via)})" if approval.decided_via not in (None, "slack") else ""
    approved = f":white_check_mark: *Approved* by {decider}{via} at {at}"
    status = approval.status
    if status in (ApprovalStatus.APPROVED, ApprovalStatus.RELEASED):
        text = f"{approved}. Forwarding to `{escape(approval.server)}`…"
    elif status is ApprovalStatus.COMPLETED:
        if approval.result is not None and approval.result.get("isError"):
            text = f"{approved}.\n:warning: *The tool reported an error:* {_result_excerpt(approval)}"
        else:
            text = f"{approved}.\n:heavy_check_mark: *Completed OK*: the upstream ran the call."
    elif status is ApprovalStatus.FAILED:
        text = f"{approved}.\n:x: *Failed*: {_result_excerpt(approval)}"
    elif status is ApprovalStatus.OUTCOME_UNKNOWN:
        text = (
            f"{approved}.\n:question: *{outcomes.HEADLINE}*: sent to `{escape(approval.server)}`, and no answer "
            f"came back ({_escaped_within(outcomes.unknown_reason(approval), 500)}).\n"
            f":mag: {_escaped_within(outcomes.guidance(approval), 1500)}"
        )
    elif status is ApprovalStatus.DENIED:
        reason = f": {_escaped_within(approval.decision_reason, 1500)}" if approval.decision_reason else ""
        text = f":no_entry: *Denied* by {decider}{via} at {at}{reason}"
    elif status is ApprovalStatus.EXPIRED:
        text = f":hourglass: *Expired, auto-denied* at {at}: nobody decided before the deadline."
    elif status is ApprovalStatus.CANCELLED:
        text = f":leftwards_arrow_with_hook: *Cancelled {_cancelled_by(approval)}* at {at}{_cancel_reason(approval)}."
    else:
        text = f"Status: {status.value}"
    return text


def already_decided_text(approval: Approval, mention: Mention) -> str:
    """The ephemeral answer to a click on an approval that has already been settled."""
    at = slack_date(approval.decided_at) if approval.decided_at is not None else "an earlier time"
    decider = mention(approval.decided_by)
    if approval.status is ApprovalStatus.PENDING:
        return f":hourglass: This request expired at {slack_date(approval.expires_at)}; nothing was approved."
    if approval.status is ApprovalStatus.EXPIRED:
        return f":hourglass: This request expired at {at} and was auto-denied; nothing was approved."
    if approval.status is ApprovalStatus.DENIED:
        return f"This call was already denied by {decider} at {at}."
    if approval.status is ApprovalStatus.CANCELLED:
        return f"This call was cancelled {_cancelled_by(approval)} at {at}{_cancel_reason(approval)}."
    return f"This call was already approved by {decider} at {at}."


def _cancelled_by(approval: Approval) -> str:
    return "by the broker" if approval.decided_via == POLICY_ACTOR else "by the agent"


def _cancel_reason(approval: Approval) -> str:
    if approval.decided_via != POLICY_ACTOR or not approval.decision_reason:
        return ""
    return f": {_escaped_within(approval.decision_reason, 500)}"


def _result_excerpt(approval: Approval, limit: int = 500) -> str:
    result = approval.result or {}
    texts = [
        block.get("text", "")
        for block in result.get("content", [])
        if isinstance(block, dict) and isinstance(block.get("text"), str)
    ]
    excerpt = " ".join(texts).strip() or "(no message)"
    return _escaped_within(excerpt, limit)


def _buttons(approval: Approval) -> dict[str, Any]:
    confirm = (
        f"`{escape(_clip(approval.tool, 80))}` will be sent to `{escape(_clip(approval.server, 60))}` "
        f"with the arguments shown (SHA-256 `{approval.arguments_hash[:12]}`)."
    )
    return {
        "type": "actions",
        "block_id": "decision",
        "elements": [
            {
                "type": "button",
                "action_id": f"{APPROVE_ACTION}:{approval.id}",
                "value": approval.id,
                "style": "primary",
                "text": _plain("Approve"),
                "confirm": {
                    "title": _plain("Approve this call?"),
                    "text": _mrkdwn(confirm),
                    "confirm": _plain("Approve"),
                    "deny": _plain("Cancel"),
                },
            },
            {
                "type": "button",
                "action_id": f"{DENY_ACTION}:{approval.id}",
                "value": approval.id,
                "style": "danger",
                "text": _plain("Deny"),
            },
        ],
    }


def deny_modal(approval: Approval, *, channel: str | None) -> dict[str, Any]:
    """Asks for an optional reason; its submission carries the approval (and where to answer) back."""
    return {
        "type": "modal",
        "callback_id": DENY_MODAL,
        "private_metadata": json.dumps({"approval_id": approval.id, "channel": channel}),
        "title": _plain("Deny call"),
        "submit": _plain("Deny"),
        "close": _plain("Cancel"),
        "blocks": [
            {
                "type": "section",
                "text": _mrkdwn(
                    f"Deny `{escape(approval.tool)}` requested by *{escape(approval.agent)}* "
                    f"(approval `{approval.id}`)?"
                ),
            },
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "optional": True,
                "label": _plain("Reason (the agent sees it)"),
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": True,
                    "max_length": REASON_MAX_LENGTH,
                },
            },
        ],
    }


# -- arguments -------------------------------------------------------------------------------------


def _arguments(approval: Approval) -> tuple[dict[str, Any], list[str]]:
    raw = _fence_safe(json.dumps(approval.arguments, indent=2, ensure_ascii=False, sort_keys=True))
    title = f"*Arguments* · SHA-256 `{approval.arguments_hash[:12]}`\n"
    whole = f"{title}```\n{escape(raw)}\n```"
    if len(whole) <= SECTION_TEXT_LIMIT:
        return {"type": "section", "block_id": "arguments", "text": _mrkdwn(whole)}, []
    note = "\n_Truncated: the full arguments follow in this thread._"
    budget = SECTION_TEXT_LIMIT - len(title) - len("```\n\n```") - len("…") - len(note)
    head, _ = _escaped_prefix(raw, budget)
    text = f"{title}```\n{head}…\n```{note}"
    return {"type": "section", "block_id": "arguments", "text": _mrkdwn(text)}, _thread_replies(approval, raw)


def _thread_replies(approval: Approval, raw: str) -> list[str]:
    chunk_budget = SECTION_TEXT_LIMIT - 100
    chunks: list[str] = []
    rest = raw
    while rest:
        piece, used = _escaped_prefix(rest, chunk_budget, prefer_line_break=True)
        chunks.append(piece)
        rest = rest[used:]
        if len(chunks) == MAX_THREAD_REPLIES and rest:
            break
    shown = len(chunks)
    replies = [
        f"Arguments, part {index}/{shown}:\n```\n{chunk}\n```" for index, chunk in enumerate(chunks, 1)
    ]
    if rest:
        replies.append(
            f"{len(rest)} more characters are not shown here; the full arguments (SHA-256 "
            f"`{approval.arguments_hash}`) are in the web inbox and at `/api/approvals/{approval.id}`."
        )
    return replies


def _escaped_prefix(raw: str, budget: int, *, prefer_line_break: bool = False) -> tuple[str, int]:
    """The longest start of `raw` whose escaped form fits `budget`, cut between characters so no
    entity such as ``&amp;`` is split; returns (escaped text, characters of `raw` used)."""
    size = 0
    used = 0
    for char in raw:
        width = len(escape(char))
        if size + width > budget:
            break
        size += width
        used += 1
    if prefer_line_break and used < len(raw):
        line_end = raw.rfind("\n", 0, used)
        if line_end > used // 2:
            used = line_end + 1
    if used == 0 and raw:
        used = 1  # a budget below one escaped character must still make progress
    return escape(raw[:used]), used


def _escaped_within(text: str, budget: int) -> str:
    """`text` escaped, shortened (with an ellipsis) so the escaped form stays within `budget`."""
    escaped, used = _escaped_prefix(text, budget - 1)
    return escaped if used == len(text) else f"{escaped}…"


def _fence_safe(text: str) -> str:
    """A zero-width space between backticks, so an argument cannot close the code block early."""
    return text.replace("``", "`\u200b`")


# -- Block Kit text objects ------------------------------------------------------------------------


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": True}


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _clip(text: str, limit: int) -> str:
    """Shortens raw text; clip before escaping, never after, so no entity or token is cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
