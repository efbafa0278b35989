"""Approve with edits and time-boxed grants in Slack: two more buttons, a modal, and what they decide.

Buttons (beside Approve and Deny, while the call is pending)
    ``Approve with edits…`` when the rule lists ``editable`` arguments (`Approval.editable`):
        opens `edit_modal`, one input per editable argument prefilled with its current value,
        and an optional reason. The modal remembers the arguments hash it was opened for.
    ``Approve + allow for N min`` when the rule that held the call, as the policy in force still
        decides it, has a ``grant`` setting (`ApprovalService.grant_allowance`): it approves with
        `grant_offer`, the rule's longest grant (N = its ``max``), for these exact arguments
        (``identical``, or the only scope the rule allows) and the rule's ``max_calls``. A
        narrower grant is given in the web inbox, the API or the CLI.

The plain Approve button's value is the arguments hash its message showed, so a yes clicked on a
message shown before an edit is refused (ArgumentsChanged) rather than counted for arguments the
person never saw; the message itself is rewritten with the edited arguments.

The modal's submission is signed like every interaction. Typed values stay typed, as in the web
form (broker.approvals.edits.parse_text): text typed into a field whose current value is a
number, true/false, a list or an object is read as JSON, a string field keeps the text. It
decides ``Approve(reason, edits, seen_hash)``; refusals (EditRefused naming the field,
ArgumentsChanged, NotAllowedToDecide) reach the person as an ephemeral message, and nothing
changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from broker.approvals.edits import MISSING, parse_text
from broker.approvals.grants import GrantRequest, GrantScope
from broker.approvals.model import Approval, Approver
from broker.approvals.service import ApprovalService
from broker.approvals.verdict import Approve, Verdict
from broker.channels.slack.client import SlackApi
from broker.channels.slack.errors import MalformedInteraction, SlackError
from broker.channels.web.edit_form import field_value
from broker.policy.grants import GrantAllowance

EDIT_ACTION: Final = "broker_edit"
GRANT_ACTION: Final = "broker_grant"
EDIT_MODAL: Final = "broker_edit_approve"
FIELD_BLOCK_PREFIX: Final = "edit."
FIELD_INPUT: Final = "value"
REASON_BLOCK: Final = "reason"
REASON_INPUT: Final = "reason"
MAX_FIELDS: Final = 20
"""Input blocks in one modal (Slack allows 100 blocks); a rule rarely lists more editable arguments."""
VALUE_MAX_LENGTH: Final = 3000
"""Slack's limit for a plain_text_input; a longer value is edited in the web inbox or the API."""
_HASH: Final = re.compile(r"[0-9a-f]{64}")


def seen_hash_of(value: object) -> str | None:
    """The arguments hash an Approve button carries; None for buttons posted before it did."""
    return value if isinstance(value, str) and _HASH.fullmatch(value) else None


def grant_offer(allowance: GrantAllowance) -> GrantRequest:
    scope = (
        GrantScope.IDENTICAL
        if GrantScope.IDENTICAL.value in allowance.scopes
        else GrantScope(allowance.scopes[0])
    )
    return GrantRequest(allowance.max_seconds, scope, allowance.max_calls)


def extra_buttons(approval: Approval, allowance: GrantAllowance | None) -> list[dict[str, Any]]:
    """The buttons after Approve and Deny for this approval (possibly none)."""
    buttons: list[dict[str, Any]] = []
    if approval.editable:
        buttons.append(
            {
                "type": "button",
                "action_id": f"{EDIT_ACTION}:{approval.id}",
                "value": approval.arguments_hash,
                "text": _plain("Approve with edits…"),
            }
        )
    if allowance is not None:
        offer = grant_offer(allowance)
        which = (
            "these exact arguments"
            if offer.scope is GrantScope.IDENTICAL
            else "any arguments this rule holds"
        )
        buttons.append(
            {
                "type": "button",
                "action_id": f"{GRANT_ACTION}:{approval.id}",
                "value": approval.arguments_hash,
                "text": _plain(f"Approve + allow for {offer.seconds / 60:g} min"),
                "confirm": {
                    "title": _plain("Approve and grant?"),
                    "text": _mrkdwn(
                        f"Approves this call, and lets *{_escape(approval.agent[:40])}* make up to "
                        f"{offer.max_calls} more calls of `{_escape(approval.tool[:60])}` with {which} "
                        f"for {offer.seconds / 60:g} minutes without asking."
                    ),
                    "confirm": _plain("Approve + allow"),
                    "deny": _plain("Cancel"),
                },
            }
        )
    return buttons


def edit_modal(approval: Approval, *, channel: str | None) -> dict[str, Any]:
    """One input per editable argument, prefilled, and an optional reason."""
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "text": _mrkdwn(
                f"Change `{_escape(approval.tool)}` requested by *{_escape(approval.agent)}* "
                f"(approval `{approval.id}`), then approve it. Numbers, true/false, lists and objects "
                "are read as JSON; only these arguments can change."
            ),
        }
    ]
    for name in approval.editable[:MAX_FIELDS]:
        value = field_value(approval.arguments.get(name, MISSING))
        element: dict[str, Any] = {
            "type": "plain_text_input",
            "action_id": FIELD_INPUT,
            "max_length": VALUE_MAX_LENGTH,
            "multiline": "\n" in value or len(value) > 150,
        }
        if value:
            element["initial_value"] = value[:VALUE_MAX_LENGTH]
        blocks.append(
            {
                "type": "input",
                "block_id": f"{FIELD_BLOCK_PREFIX}{name}",
                "label": _plain(name[:2000]),
                "element": element,
            }
        )
    blocks.append(
        {
            "type": "input",
            "block_id": REASON_BLOCK,
            "optional": True,
            "label": _plain("Reason (the agent sees it)"),
            "element": {
                "type": "plain_text_input",
                "action_id": REASON_INPUT,
                "multiline": True,
                "max_length": 2000,
            },
        }
    )
    return {
        "type": "modal",
        "callback_id": EDIT_MODAL,
        "private_metadata": json.dumps(
            {"approval_id": approval.id, "channel": channel, "seen_hash": approval.arguments_hash}
        ),
        "title": _plain("Approve with edits"),
        "submit": _plain("Approve"),
        "close": _plain("Cancel"),
        "blocks": blocks,
    }


@dataclass(frozen=True, slots=True)
class ExtraClick:
    """A click on ``Approve with edits…`` (edit) or ``Approve + allow`` (grant)."""

    grant: bool
    approval_id: str
    user_id: str
    channel_id: str | None
    trigger_id: str | None
    seen_hash: str | None


@dataclass(frozen=True, slots=True)
class EditSubmission:
    approval_id: str
    user_id: str
    channel_id: str | None
    seen_hash: str
    texts: Mapping[str, str]
    """Argument name -> the text submitted for it."""
    reason: str | None


def parse_extra_click(
    name: str,
    approval_id: str,
    action: Mapping[str, Any],
    *,
    user_id: str,
    channel_id: str | None,
    trigger_id: str | None,
) -> ExtraClick | None:
    if name not in (EDIT_ACTION, GRANT_ACTION):
        return None
    return ExtraClick(
        name == GRANT_ACTION, approval_id, user_id, channel_id, trigger_id, seen_hash_of(action.get("value"))
    )


def parse_edit_submission(
    view: Mapping[str, Any], metadata: Mapping[str, Any], user_id: str
) -> EditSubmission:
    approval_id = metadata.get("approval_id")
    seen = seen_hash_of(metadata.get("seen_hash"))
    if not isinstance(approval_id, str) or not approval_id or seen is None:
        raise MalformedInteraction("the edit dialog's private_metadata names no approval or arguments hash")
    channel = metadata.get("channel")
    state = view.get("state")
    values = state.get("values") if isinstance(state, dict) else None
    if not isinstance(values, dict):
        raise MalformedInteraction("the edit dialog's submission has no state.values")
    texts: dict[str, str] = {}
    reason: str | None = None
    for block_id, block in values.items():
        element = (
            block.get(FIELD_INPUT if block_id != REASON_BLOCK else REASON_INPUT)
            if isinstance(block, dict)
            else None
        )
        value = element.get("value") if isinstance(element, dict) else None
        if value is not None and not isinstance(value, str):
            raise MalformedInteraction(f"the input {block_id!r} is not text")
        if block_id == REASON_BLOCK:
            reason = value.strip() if value and value.strip() else None
        elif isinstance(block_id, str) and block_id.startswith(FIELD_BLOCK_PREFIX):
            texts[block_id[len(FIELD_BLOCK_PREFIX) :]] = value or ""
    return EditSubmission(
        approval_id, user_id, channel if isinstance(channel, str) and channel else None, seen, texts, reason
    )


Authorise = Callable[[str, str, str | None, str], Awaitable[tuple[Approval, Approver] | None]]
Tell = Callable[[str | None, str, str], Awaitable[None]]
Decide = Callable[[str, Approver, str, str | None, Verdict], Awaitable[object]]


class SlackEdits:
    """What the extra buttons and the edit dialog do; the handler lends its checks and replies."""

    def __init__(
        self, service: ApprovalService, api: SlackApi, *, authorise: Authorise, tell: Tell, decide: Decide
    ) -> None:
        self._service = service
        self._api = api
        self._authorise = authorise
        self._tell = tell
        self._decide = decide

    async def click(self, click: ExtraClick) -> None:
        verb = "approve" if click.grant else "edit"
        authorised = await self._authorise(click.approval_id, click.user_id, click.channel_id, verb)
        if authorised is None:
            return
        approval, approver = authorised
        if click.grant:
            allowance = self._service.grant_allowance(approval)
            if allowance is None:
                await self._tell(
                    click.channel_id,
                    click.user_id,
                    ":no_entry_sign: The rule in force no longer allows a grant for this call; nothing was decided.",
                )
                return
            verdict = Approve(None, seen_hash=click.seen_hash, grant=grant_offer(allowance))
            await self._decide(click.approval_id, approver, click.user_id, click.channel_id, verdict)
            return
        if click.seen_hash is not None and click.seen_hash != approval.arguments_hash:
            await self._tell(click.channel_id, click.user_id, STALE_TEXT)
            return
        if click.trigger_id is None:
            await self._tell(
                click.channel_id, click.user_id, "Slack sent no trigger to open the edit dialog; try again."
            )
            return
        try:
            await self._api.open_view(click.trigger_id, edit_modal(approval, channel=click.channel_id))
        except SlackError:
            await self._tell(
                click.channel_id, click.user_id, "Could not open the edit dialog; nothing was decided."
            )

    async def submit(self, submission: EditSubmission) -> None:
        authorised = await self._authorise(
            submission.approval_id, submission.user_id, submission.channel_id, "edit"
        )
        if authorised is None:
            return
        approval, approver = authorised
        edits = {
            name: parse_text(text, None, approval.arguments.get(name, MISSING))
            for name, text in submission.texts.items()
        }
        verdict = Approve(submission.reason, edits=edits, seen_hash=submission.seen_hash)
        await self._decide(
            submission.approval_id, approver, submission.user_id, submission.channel_id, verdict
        )


STALE_TEXT: Final = (
    ":arrows_counterclockwise: The arguments were edited since this message was posted; look again "
    "(the message now shows them) before deciding. Nothing was decided."
)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text[:150], "emoji": True}


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text[:300]}
