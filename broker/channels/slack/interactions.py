"""The one handler behind both Slack transports (the HTTP request URL and Socket Mode).

A transport proves the payload came from Slack, calls `InteractionHandler.accept` and answers
Slack at once; the decision and every reply to the person run afterwards in the handler's own
task group, so Slack's three-second deadline never waits on the store or on Slack itself.
Whatever goes wrong, nothing is decided unless `ApprovalService.decide` says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup

from broker.approvals.clock import Clock, utc_now
from broker.approvals.deciding import NotAllowedToDecide
from broker.approvals.edits import EditRefused
from broker.approvals.model import Approval, ApprovalStatus, Approver
from broker.approvals.ports import ApprovalError, ApprovalNotFound, ArgumentsChanged, InvalidTransition
from broker.approvals.quorum import progress_text
from broker.approvals.service import ApprovalService
from broker.approvals.verdict import Deny, Verdict, verdict_of
from broker.channels.slack.blocks import (
    APPROVE_ACTION,
    DENY_ACTION,
    DENY_MODAL,
    REASON_BLOCK,
    REASON_INPUT,
    already_decided_text,
    deny_modal,
    escape,
)
from broker.channels.slack.client import SlackApi
from broker.channels.slack.edits import (
    EDIT_MODAL,
    STALE_TEXT,
    EditSubmission,
    ExtraClick,
    SlackEdits,
    parse_edit_submission,
    parse_extra_click,
    seen_hash_of,
)
from broker.channels.slack.errors import MalformedInteraction, SlackError
from broker.channels.slack.people import SlackPeople

logger = logging.getLogger(__name__)

DECIDED_VIA = "slack"


@dataclass(frozen=True, slots=True)
class ButtonClick:
    approve: bool
    approval_id: str
    user_id: str
    channel_id: str | None
    trigger_id: str | None
    seen_hash: str | None = None
    """For Approve: the arguments hash the message showed (None on messages posted before it did)."""


@dataclass(frozen=True, slots=True)
class DenySubmission:
    approval_id: str
    user_id: str
    channel_id: str | None
    reason: str | None


Interaction = ButtonClick | DenySubmission | ExtraClick | EditSubmission


def parse_interaction(payload: Mapping[str, Any]) -> Interaction | None:
    """The broker's reading of a Slack interaction payload; None for ones that are not ours."""
    kind = payload.get("type")
    user_id = _user_id(payload)
    if kind == "block_actions":
        for action in _list(payload.get("actions"), "actions"):
            action_id = _string(action.get("action_id"), "actions[].action_id")
            name, _, approval_id = action_id.partition(":")
            if not name.startswith("broker_"):
                continue
            if not approval_id:
                raise MalformedInteraction(f"action {action_id!r} names no approval")
            channel = payload.get("channel")
            channel_id = _optional_string(channel.get("id") if isinstance(channel, dict) else None)
            trigger_id = _optional_string(payload.get("trigger_id"))
            extra = parse_extra_click(
                name, approval_id, action, user_id=user_id, channel_id=channel_id, trigger_id=trigger_id
            )
            if extra is not None:
                return extra
            if name not in (APPROVE_ACTION, DENY_ACTION):
                continue
            return ButtonClick(
                approve=name == APPROVE_ACTION,
                approval_id=approval_id,
                user_id=user_id,
                channel_id=channel_id,
                trigger_id=trigger_id,
                seen_hash=seen_hash_of(action.get("value")),
            )
        return None
    if kind == "view_submission":
        view = payload.get("view")
        if not isinstance(view, dict) or view.get("callback_id") not in (DENY_MODAL, EDIT_MODAL):
            return None
        try:
            metadata = json.loads(_string(view.get("private_metadata"), "view.private_metadata"))
        except json.JSONDecodeError as exc:
            raise MalformedInteraction(f"view.private_metadata is not JSON: {exc.msg}") from exc
        if not isinstance(metadata, dict):
            raise MalformedInteraction("view.private_metadata is not an object")
        if view.get("callback_id") == EDIT_MODAL:
            return parse_edit_submission(view, metadata, user_id)
        return DenySubmission(
            approval_id=_string(metadata.get("approval_id"), "private_metadata.approval_id"),
            user_id=user_id,
            channel_id=_optional_string(metadata.get("channel")),
            reason=_submitted_reason(view),
        )
    return None


def _submitted_reason(view: Mapping[str, Any]) -> str | None:
    state = view.get("state")
    values = state.get("values") if isinstance(state, dict) else None
    block = values.get(REASON_BLOCK) if isinstance(values, dict) else None
    element = block.get(REASON_INPUT) if isinstance(block, dict) else None
    reason = element.get("value") if isinstance(element, dict) else None
    if reason is not None and not isinstance(reason, str):
        raise MalformedInteraction("the reason input's value is not text")
    if reason is None or not reason.strip():
        return None
    return reason.strip()


def _user_id(payload: Mapping[str, Any]) -> str:
    user = payload.get("user")
    if not isinstance(user, dict):
        raise MalformedInteraction("the interaction names no user")
    return _string(user.get("id"), "user.id")


def _list(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise MalformedInteraction(f"{where} is not a list of objects")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedInteraction(f"{where} is missing or not text")
    return value


def _optional_string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class InteractionHandler:
    def __init__(
        self, service: ApprovalService, api: SlackApi, people: SlackPeople, *, clock: Clock = utc_now
    ) -> None:
        self._service = service
        self._api = api
        self._people = people
        self._clock = clock
        self._tasks: TaskGroup | None = None
        self._edits = SlackEdits(
            service, api, authorise=self._authorised, tell=self._tell, decide=self._decide
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[InteractionHandler]:
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            try:
                yield self
            finally:
                self._tasks = None
                tasks.cancel_scope.cancel()

    def accept(self, payload: Mapping[str, Any]) -> None:
        """Takes a verified payload and returns at once; raises MalformedInteraction for bad ones."""
        interaction = parse_interaction(payload)
        if interaction is None:
            logger.debug("ignoring Slack interaction of type %r", payload.get("type"))
            return
        if self._tasks is None:
            raise RuntimeError("InteractionHandler.running() must be entered before interactions arrive")
        self._tasks.start_soon(self._handle_logged, interaction)

    async def _handle_logged(self, interaction: Interaction) -> None:
        try:
            await self.handle(interaction)
        except Exception:
            logger.exception("handling Slack interaction %s failed; nothing was decided by it", interaction)

    async def handle(self, interaction: Interaction) -> None:
        if isinstance(interaction, ButtonClick):
            await self._click(interaction)
        elif isinstance(interaction, ExtraClick):
            await self._edits.click(interaction)
        elif isinstance(interaction, EditSubmission):
            await self._edits.submit(interaction)
        else:
            await self._submit_denial(interaction)

    async def _click(self, click: ButtonClick) -> None:
        verb = "approve" if click.approve else "deny"
        authorised = await self._authorised(click.approval_id, click.user_id, click.channel_id, verb)
        if authorised is None:
            return
        approval, approver = authorised
        if click.approve:
            await self._decide(
                click.approval_id,
                approver,
                click.user_id,
                click.channel_id,
                verdict_of(True, seen_hash=click.seen_hash),
            )
            return
        if approval.status is not ApprovalStatus.PENDING or approval.is_overdue(self._clock()):
            await self._tell(
                click.channel_id, click.user_id, already_decided_text(approval, self._people.mention)
            )
            return
        if click.trigger_id is None:
            await self._tell(
                click.channel_id, click.user_id, "Slack sent no trigger to open the deny dialog; try again."
            )
            return
        try:
            await self._api.open_view(click.trigger_id, deny_modal(approval, channel=click.channel_id))
        except SlackError as exc:
            logger.warning("approval %s: could not open the deny dialog: %s", click.approval_id, exc)
            await self._tell(
                click.channel_id, click.user_id, "Could not open the deny dialog; nothing was decided."
            )

    async def _submit_denial(self, submission: DenySubmission) -> None:
        authorised = await self._authorised(
            submission.approval_id, submission.user_id, submission.channel_id, "deny"
        )
        if authorised is not None:
            await self._decide(
                submission.approval_id,
                authorised[1],
                submission.user_id,
                submission.channel_id,
                Deny(submission.reason),
            )

    async def _authorised(
        self, approval_id: str, user_id: str, channel: str | None, verb: str
    ) -> tuple[Approval, Approver] | None:
        """The approval and the approver the Slack user acts as, or None after telling them why not."""
        try:
            approval = await self._service.store.get(approval_id)
        except ApprovalError as exc:
            await self._tell(
                channel,
                user_id,
                f"The approval store is unavailable; nothing was decided ({escape(str(exc))}).",
            )
            return None
        if approval is None:
            await self._tell(channel, user_id, f"There is no approval `{escape(approval_id)}` any more.")
            return None
        try:
            approver = await self._people.approver(user_id, approval)
        except SlackError as exc:
            logger.warning("approval %s: Slack group membership of %s unknown: %s", approval_id, user_id, exc)
            await self._tell(
                channel,
                user_id,
                "Could not check your Slack user groups right now; nothing was decided. Try again shortly.",
            )
            return None
        if approver is None:
            await self._tell(
                channel,
                user_id,
                f":no_entry_sign: You may not {verb} this: your Slack account is not linked to a broker approver.",
            )
            return None
        refusal = self._service.may_decide(approval, approver)
        if refusal is not None:
            await self._tell(channel, user_id, f":no_entry_sign: You may not {verb} this: {escape(refusal)}.")
            return None
        return approval, approver

    async def _decide(
        self,
        approval_id: str,
        approver: Approver,
        user_id: str,
        channel: str | None,
        verdict: Verdict,
    ) -> Approval | None:
        try:
            decided = await self._service.decide(approval_id, verdict, approver=approver, via=DECIDED_VIA)
            if decided.status is ApprovalStatus.PENDING and (votes := progress_text(decided)):
                await self._tell(channel, user_id, f"Your approval is recorded; {escape(votes)}.")
            return decided
        except ArgumentsChanged:
            await self._tell(channel, user_id, STALE_TEXT)
        except InvalidTransition as lost:
            await self._tell(channel, user_id, already_decided_text(lost.current, self._people.mention))
        except NotAllowedToDecide as exc:
            await self._tell(
                channel, user_id, f":no_entry_sign: You may not decide this: {escape(str(exc))}."
            )
        except EditRefused as exc:
            await self._tell(
                channel,
                user_id,
                f":no_entry_sign: Your edit was refused: {escape(str(exc))}. Nothing was decided.",
            )
        except ApprovalNotFound:
            await self._tell(channel, user_id, f"There is no approval `{escape(approval_id)}` any more.")
        except ApprovalError as exc:
            await self._tell(
                channel,
                user_id,
                f"The approval store is unavailable; nothing was decided ({escape(str(exc))}).",
            )
        return None

    async def _tell(self, channel: str | None, user_id: str, text: str) -> None:
        """An ephemeral reply only `user_id` sees; best effort, since the decision stands either way."""
        if channel is None:
            logger.info("no channel to tell Slack user %s: %s", user_id, text)
            return
        try:
            await self._api.post_ephemeral(channel, user_id, text)
        except SlackError as exc:
            logger.warning("could not tell Slack user %s (%s): %s", user_id, text, exc)
