"""Keeps one Slack message per approval truthful: posted when the approval opens, rewritten on every change.

Slack's availability never touches an approval's fate: failures are logged, recorded in the
audit trail and retried with a bounded exponential backoff, while the approval stays pending
for the web inbox and the API.

One writer per message: every post and update for an approval runs under that approval's
lock and renders the approval as the store has it *now*, so whichever write lands last shows
the latest state, whatever order the change notifications arrived in.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.model import Approval
from broker.approvals.ports import ApprovalError, ApprovalStore
from broker.channels.slack.blocks import ApprovalMessage, approval_message
from broker.channels.slack.client import PostedMessage, SlackApi
from broker.channels.slack.errors import SlackRateLimited, SlackRejected, SlackUnavailable
from broker.channels.slack.people import SlackPeople

logger = logging.getLogger(__name__)

AUDIT_ACTOR = "slack"
POST_FAILED = "slack_post_failed"
UPDATE_FAILED = "slack_update_failed"
SLACK_CHANNEL_PREFIX = "slack:"

Sleep = Callable[[float], Awaitable[None]]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Exponential backoff for calls to Slack: first_delay, doubling up to max_delay, until the
    waits add up to give_up_after (2 s … 120 s for about ten minutes by default)."""

    first_delay: float = 2.0
    max_delay: float = 120.0
    give_up_after: float = 600.0

    def delays(self) -> Iterator[float]:
        waited, delay = 0.0, self.first_delay
        while waited + delay <= self.give_up_after:
            yield delay
            waited += delay
            delay = min(delay * 2, self.max_delay)


DEFAULT_RETRY_SCHEDULE = RetrySchedule()


def slack_destination(approval: Approval, default_channel: str | None) -> str | None:
    """Where the approval's prompt goes: the first ``slack:<channel>`` its rule names; the default
    channel for a bare ``slack`` or a rule naming no channels; nowhere for a rule whose channels
    leave Slack out."""
    if not approval.channels:
        return default_channel
    for channel in approval.channels:
        if channel == "slack":
            return default_channel
        if channel.startswith(SLACK_CHANNEL_PREFIX):
            return channel[len(SLACK_CHANNEL_PREFIX) :] or default_channel
    return None


class _KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (anyio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass(slots=True)
class _Shown:
    message: PostedMessage
    digest: str


class SlackNotifier:
    """The approval listener that posts and updates the Slack messages."""

    MEMORY = 2000
    """Messages remembered in-process (to skip identical rewrites and to outlive a failed store write)."""

    def __init__(
        self,
        store: ApprovalStore,
        api: SlackApi,
        *,
        people: SlackPeople,
        default_channel: str | None,
        schedule: RetrySchedule = DEFAULT_RETRY_SCHEDULE,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self._store = store
        self._api = api
        self._people = people
        self._default_channel = default_channel
        self._schedule = schedule
        self._sleep = sleep
        self._locks = _KeyedLocks()
        self._shown: OrderedDict[str, _Shown] = OrderedDict()

    async def approval_opened(self, approval: Approval) -> None:
        channel = slack_destination(approval, self._default_channel)
        if channel is None:
            return
        async with self._locks.hold(approval.id):
            posted = await self._retrying(approval.id, POST_FAILED, lambda: self._post(approval, channel))
            if posted is None:
                return
            message, replies = posted
            for reply in replies:
                reply_once = partial(
                    self._api.post_message, message.channel, text=reply, thread_ts=message.ts
                )
                sent = await self._retrying(approval.id, POST_FAILED, reply_once)
                if sent is None:
                    break

    async def approval_updated(self, approval: Approval) -> None:
        if slack_destination(approval, self._default_channel) is None and approval.id not in self._shown:
            return  # its rule keeps it out of Slack
        async with self._locks.hold(approval.id):
            await self._retrying(
                approval.id, UPDATE_FAILED, lambda: self._update(approval), audit_every_failure=False
            )

    async def settled(self, approval_id: str) -> None:
        """Returns once no post or update of this approval's message is under way (e.g. before shutdown)."""
        async with self._locks.hold(approval_id):
            return

    # -- one attempt each ----------------------------------------------------------------------

    async def _post(self, snapshot: Approval, channel: str) -> tuple[PostedMessage, list[str]]:
        current = await self._latest(snapshot)
        already = self._message_of(current)
        if already is not None:
            return already, []
        rendered = approval_message(current, mention=self._people.mention)
        message = await self._api.post_message(channel, text=rendered.text, blocks=rendered.blocks)
        self._remember(current.id, message, _digest(rendered))
        logger.info(
            "approval %s: posted to Slack channel %s (ts %s)", current.id, message.channel, message.ts
        )
        try:
            await self._store.update_fields(
                current.id,
                {"slack_channel": message.channel, "slack_ts": message.ts},
                audit=AuditEvent(
                    AuditEventKind.NOTIFIED,
                    AUDIT_ACTOR,
                    {
                        "channel": message.channel,
                        "requested_channel": channel,
                        "ts": message.ts,
                        "thread_replies": len(rendered.thread_replies),
                    },
                ),
            )
        except ApprovalError as exc:
            # The message is out; this process still knows where it is and keeps it current.
            logger.error("approval %s: could not record its Slack message %s: %s", current.id, message, exc)
        return message, rendered.thread_replies

    async def _update(self, snapshot: Approval) -> None:
        current = await self._latest(snapshot)
        message = self._message_of(current)
        if message is None:
            return  # not posted (yet): the post renders whatever the approval is by then
        rendered = approval_message(current, mention=self._people.mention)
        digest = _digest(rendered)
        shown = self._shown.get(current.id)
        if shown is not None and shown.digest == digest:
            return
        await self._api.update_message(message, text=rendered.text, blocks=rendered.blocks)
        self._remember(current.id, message, digest)
        logger.info("approval %s: Slack message updated (%s)", current.id, current.status.value)

    async def _latest(self, snapshot: Approval) -> Approval:
        """The approval as stored now; the snapshot when the store cannot say or is behind it."""
        try:
            fresh = await self._store.get(snapshot.id)
        except ApprovalError as exc:
            logger.warning(
                "approval %s: store unavailable, showing the state last announced: %s", snapshot.id, exc
            )
            return snapshot
        if fresh is None or fresh.version < snapshot.version:
            return snapshot
        return fresh

    def _message_of(self, approval: Approval) -> PostedMessage | None:
        if approval.slack_channel and approval.slack_ts:
            return PostedMessage(approval.slack_channel, approval.slack_ts)
        shown = self._shown.get(approval.id)
        return shown.message if shown is not None else None

    def _remember(self, approval_id: str, message: PostedMessage, digest: str) -> None:
        self._shown[approval_id] = _Shown(message, digest)
        self._shown.move_to_end(approval_id)
        while len(self._shown) > self.MEMORY:
            self._shown.popitem(last=False)

    # -- retrying ------------------------------------------------------------------------------

    async def _retrying(
        self,
        approval_id: str,
        failure_event: str,
        attempt: Callable[[], Awaitable[_T]],
        *,
        audit_every_failure: bool = True,
    ) -> _T | None:
        """`attempt` until it succeeds, Slack refuses it, or the schedule runs out (then None)."""
        delays = self._schedule.delays()
        number = 0
        while True:
            number += 1
            try:
                return await attempt()
            except SlackRejected as exc:
                logger.error("approval %s: %s (attempt %d); not retrying", approval_id, exc, number)
                await self._audit(
                    approval_id, failure_event, {"error": str(exc), "attempt": number, "final": True}
                )
                return None
            except SlackUnavailable as exc:
                delay = next(delays, None)
                if delay is not None and isinstance(exc, SlackRateLimited):
                    # Slack said how long to wait; the schedule still bounds how often we ask.
                    delay = min(exc.retry_after, self._schedule.give_up_after)
                details: dict[str, Any] = {"error": str(exc), "attempt": number, "final": delay is None}
                if delay is None:
                    logger.error(
                        "approval %s: giving up on Slack after %d attempts: %s", approval_id, number, exc
                    )
                else:
                    details["retry_in"] = delay
                    logger.warning(
                        "approval %s: %s; retrying in %gs (attempt %d)", approval_id, exc, delay, number
                    )
                if audit_every_failure or delay is None:
                    await self._audit(approval_id, failure_event, details)
                if delay is None:
                    return None
                await self._sleep(delay)

    async def _audit(self, approval_id: str, event: str, details: Mapping[str, Any]) -> None:
        try:
            await self._store.append_audit(AuditEvent(event, AUDIT_ACTOR, details, approval_id=approval_id))
        except ApprovalError as exc:
            logger.error("approval %s: could not record %s in the audit trail: %s", approval_id, event, exc)


def _digest(rendered: ApprovalMessage) -> str:
    payload = json.dumps({"text": rendered.text, "blocks": rendered.blocks}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
