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
from broker.approvals.call_view import CallContext, CallField, CallView, Shape, ToolFacts, call_view
from broker.approvals.escalation import escalation_text
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.quorum import progress_text
from broker.approvals.service import POLICY_ACTOR
from broker.channels.slack.edits import extra_buttons
from broker.policy.grants import GrantAllowance

SECTION_TEXT_LIMIT = 3000
"""Slack refuses a section whose text is longer than this."""
HEADER_TEXT_LIMIT = 150
MAX_THREAD_REPLIES = 20
"""Arguments beyond this many thread replies (about 60 kB) are left to the web inbox and the API."""
MAX_ARGUMENT_BLOCKS = 30
"""Sections for arguments in one message (Slack allows 50 blocks); further ones go to the thread."""
CONFIRM_TEXT_LIMIT = 300
DESCRIPTION_LIMIT = 300
RISK_EMOJI = {
    "critical": ":red_circle:",
    "high": ":large_orange_circle:",
    "medium": ":large_yellow_circle:",
    "low": ":large_green_circle:",
}

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


def approval_message(
    approval: Approval,
    *,
    mention: Mention,
    context: CallContext | None = None,
    grant: GrantAllowance | None = None,
) -> ApprovalMessage:
    """The message for an approval as it stands: a prompt while pending, its outcome afterwards.

    Reading order (see `broker.approvals.call_view`): what the tool is and how risky, why the
    call was held (the condition with the value it saw), then the arguments, decisive ones first,
    every short one whole; long values are started here and posted whole in the thread, and the
    message says so. Nothing long is cut to make room: short fields come first. `grant`: what
    the rule lets approvers grant now, for the ``Approve + allow`` button (broker.channels.slack.edits).
    """
    view = context.view if context is not None else call_view(approval, None)
    arguments = _Arguments(approval, view)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(_clip(_headline(approval), HEADER_TEXT_LIMIT))},
        {
            "type": "section",
            "fields": [
                _mrkdwn(f"*Agent*\n{escape(approval.agent)}"),
                _mrkdwn(f"*Upstream server*\n{escape(approval.server)}"),
                _mrkdwn(f"*Requested*\n{slack_date(approval.created_at)}"),
                _mrkdwn(_deadline_field(approval)),
            ],
        },
    ]
    if context is not None and context.tool.listed:
        blocks.append(_about_tool(context.tool))
    blocks.append(_held_because(approval, view))
    blocks.extend(arguments.blocks)
    if approval.status is ApprovalStatus.PENDING:
        blocks.append(_buttons(approval, arguments, grant))
    else:
        blocks.append(
            {"type": "section", "block_id": "outcome", "text": _mrkdwn(outcome_text(approval, mention))}
        )
    return ApprovalMessage(text=_notification(approval), blocks=blocks, thread_replies=arguments.replies)


def _about_tool(facts: ToolFacts) -> dict[str, Any]:
    parts = []
    if facts.risk is not None and facts.category is not None:
        emoji = RISK_EMOJI.get(facts.risk, ":white_circle:")
        why = f" ({_escaped_within(facts.reasons[0], 300)})" if facts.reasons else ""
        parts.append(f"{emoji} *{escape(facts.category.replace('_', ' '))} · {escape(facts.risk)} risk*{why}")
    if facts.description:
        parts.append(_escaped_within(" ".join(facts.description.split()), DESCRIPTION_LIMIT))
    text = "\n".join(parts) or "The upstream gives no description of this tool."
    return {"type": "context", "block_id": "about", "elements": [_mrkdwn(text)]}


def _held_because(approval: Approval, view: CallView) -> dict[str, Any]:
    hold = view.hold
    because = ""
    if hold.conditions:
        said = "; ".join(condition.text for condition in hold.conditions)
        because = f" because *{_escaped_within(said, 600)}*"
    changed = f" ({_escaped_within(hold.policy_changed, 300)})" if hold.policy_changed else ""
    text = (
        f"Held by rule `{escape(_clip(approval.rule, 200))}`{because}: "
        f"{_escaped_within(approval.rule_reason, 500)}{changed} · approval `{approval.id}`"
    )
    if votes := progress_text(approval):
        text += f" · {escape(votes)}"
    if escalated := escalation_text(approval):
        text += f" · :rotating_light: {escape(escalated)}"
    return {"type": "context", "block_id": "held", "elements": [_mrkdwn(text)]}


def _deadline_field(approval: Approval) -> str:
    """The auto-deny deadline only while it can still happen; once decided, when that was."""
    if approval.status is ApprovalStatus.PENDING:
        return f"*Auto-deny*\n{slack_date(approval.expires_at)}"
    if approval.decided_at is not None:
        return f"*Decided*\n{slack_date(approval.decided_at)}"
    return f"*Deadline was*\n{slack_date(approval.expires_at)}"


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


def _buttons(approval: Approval, arguments: _Arguments, grant: GrantAllowance | None) -> dict[str, Any]:
    confirm = _clip_escaped(
        f"`{escape(_clip(approval.tool, 60))}` will be sent to `{escape(_clip(approval.server, 40))}` "
        f"with {arguments.what_was_shown()} (SHA-256 `{approval.arguments_hash[:12]}`).",
        CONFIRM_TEXT_LIMIT,
    )
    return {
        "type": "actions",
        "block_id": "decision",
        "elements": [
            {
                "type": "button",
                "action_id": f"{APPROVE_ACTION}:{approval.id}",
                "value": approval.arguments_hash,  # a yes counts only for the arguments shown
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
            *extra_buttons(approval, grant),
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


class _Arguments:
    """The argument sections of a message and the thread replies that complete them.

    Short fields go first, all of them whole, in one code block (several if they overflow a
    section); then multi-line ones as blocks; then the start of each long one, saying its full
    value is in the thread. Fields beyond `MAX_ARGUMENT_BLOCKS` sections go to the thread whole.
    """

    def __init__(self, approval: Approval, view: CallView) -> None:
        self.approval = approval
        self.blocks: list[dict[str, Any]] = []
        self.started: list[CallField] = []
        """Long fields of which the message shows only the start."""
        self.moved: list[CallField] = []
        """Fields the message could not hold at all."""
        self.replies: list[str] = []
        self.complete = True
        """Every arg not shown whole here is whole in the thread."""
        title = f"*Arguments* · SHA-256 `{approval.arguments_hash[:12]}`"
        if not view.fields:
            self.blocks.append(self._section(f"{title}\n_No arguments._"))
            return
        short = [arg for arg in view.fields if arg.shape is Shape.SHORT]
        blocks_left = [arg for arg in view.fields if arg.shape is not Shape.SHORT]
        self._short_sections(title, short)
        for arg in blocks_left:
            if len(self.blocks) >= MAX_ARGUMENT_BLOCKS:
                self.moved.append(arg)
            elif arg.shape is Shape.MULTILINE and self._fits_whole(arg):
                self.blocks.append(self._section(f"*{escape(arg.name)}*\n{_code(arg.text)}"))
            else:
                self.started.append(arg)
                self.blocks.append(self._section(self._started_text(arg)))
        if self.moved:
            names = ", ".join(f"`{_inline(arg.name, 40)}`" for arg in self.moved[:5])
            more = f" and {len(self.moved) - 5} more" if len(self.moved) > 5 else ""
            self.blocks.append(
                self._section(f"_{len(self.moved)} more arguments ({names}{more}) are in the thread._")
            )
        self._thread([*self.started, *self.moved])

    def what_was_shown(self) -> str:
        """For the confirm dialog: never more than the message showed."""
        if not self.started and not self.moved:
            return "the arguments shown in this message"
        partial = [*self.started, *self.moved]
        names = ", ".join(f"`{_inline(arg.name, 30)}`" for arg in partial[:2])
        more = f" and {len(partial) - 2} more" if len(partial) > 2 else ""
        where = "the thread" if self.complete else "the thread and the web inbox"
        return f"the arguments in this message; {names}{more} only in part here, whole in {where}"

    def _section(self, text: str) -> dict[str, Any]:
        block: dict[str, Any] = {"type": "section", "text": _mrkdwn(text)}
        if not self.blocks:
            block["block_id"] = "arguments"
        return block

    def _short_sections(self, title: str, fields: list[CallField]) -> None:
        width = min(max((len(arg.name) for arg in fields), default=0), 24)
        lines: list[str] = []
        head = title
        budget = SECTION_TEXT_LIMIT - len(head) - len("\n```\n\n```")
        for arg in fields:
            if len(self.blocks) >= MAX_ARGUMENT_BLOCKS - 1:
                self.moved.append(arg)
                continue
            line = escape(_fence_safe(f"{_clip(arg.name, 80):<{width}}  {arg.text}"))
            if lines and sum(len(each) + 1 for each in lines) + len(line) > budget:
                self.blocks.append(self._section(f"{head}\n```\n" + "\n".join(lines) + "\n```"))
                lines, head = [], ""
                budget = SECTION_TEXT_LIMIT - len("```\n\n```")
            lines.append(line)
        if lines:
            self.blocks.append(self._section(f"{head}\n```\n" + "\n".join(lines) + "\n```"))
        elif head:
            self.blocks.append(self._section(head))

    @staticmethod
    def _fits_whole(arg: CallField) -> bool:
        return len(f"*{escape(arg.name)}*\n{_code(arg.text)}") <= SECTION_TEXT_LIMIT

    @staticmethod
    def _started_text(arg: CallField) -> str:
        name = _inline(arg.name, 80)
        note = f"_Full value of `{name}` ({arg.size:,} characters) in the thread._"
        budget = SECTION_TEXT_LIMIT - len(f"*{name}*\n```\n…\n```\n") - len(note)
        start, _ = _escaped_prefix(_fence_safe(arg.preview), min(budget, 600))
        return f"*{name}*\n```\n{start}…\n```\n{note}"

    def _thread(self, fields: list[CallField]) -> None:
        for arg in fields:
            if len(self.replies) >= MAX_THREAD_REPLIES:
                self.complete = False
                break
            chunks, rest = _chunks(_fence_safe(arg.text), MAX_THREAD_REPLIES - len(self.replies))
            name = _inline(arg.name, 80)
            self.replies.extend(
                f"Full value of `{name}` ({arg.size:,} characters), part {index}/{len(chunks)}:\n```\n{chunk}\n```"
                for index, chunk in enumerate(chunks, 1)
            )
            if rest:
                self.complete = False
                break
        if not self.complete:
            approval = self.approval
            self.replies.append(
                "More characters than a thread should hold are not shown here; the full arguments "
                f"(SHA-256 `{approval.arguments_hash}`) are in the web inbox and at "
                f"`/api/approvals/{approval.id}`."
            )


def _inline(name: str, limit: int) -> str:
    """An argument name for inside `code`: a backtick in it would end the span early."""
    return escape(_clip(name, limit)).replace("`", "'")


def _code(text: str) -> str:
    return f"```\n{escape(_fence_safe(text))}\n```"


def _chunks(raw: str, most: int) -> tuple[list[str], str]:
    """`raw` escaped in pieces that fit a reply, at most `most` of them, and what did not fit."""
    chunk_budget = SECTION_TEXT_LIMIT - 100
    chunks: list[str] = []
    rest = raw
    while rest and len(chunks) < most:
        piece, used = _escaped_prefix(rest, chunk_budget, prefer_line_break=True)
        chunks.append(piece)
        rest = rest[used:]
    return chunks, rest


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


def _clip_escaped(text: str, limit: int) -> str:
    """Shortens already escaped mrkdwn at a space, so no entity or `code` span is split."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit - 1)
    return text[: cut if cut > 0 else limit - 1] + "…"


def _clip(text: str, limit: int) -> str:
    """Shortens raw text; clip before escaping, never after, so no entity or token is cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
