"""The Slack posts of escalation steps: a new message, with the buttons, in each channel a step names.

The replica that took a step (broker.approvals.escalation) posts at once. Each post is claimed in
the store first and settled after (broker.approvals.escalation_posts), so a post is made by one
replica, and one that a replica left unmade (it died after taking the step) is found by the
notifier's reconciler on any replica (`missing`) and made there, while the call still waits.

Retried while Slack is unavailable and the call still waits (the claim renewed before every
attempt, so a writer whose claim another replica took over stops); a call decided meanwhile gets
no escalation post, since its original message tells the outcome. Not kept current afterwards (a
late click is told the outcome).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from datetime import timedelta
from typing import Any

from broker.approvals.clock import Clock
from broker.approvals.escalation import Escalated
from broker.approvals.escalation_posts import EscalationPostStore, PostOutcome, owed
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.ports import ApprovalStore
from broker.channels.slack.blocks import ApprovalMessage, escape
from broker.channels.slack.client import SlackApi
from broker.channels.slack.errors import SlackRateLimited, SlackRejected, SlackUnavailable
from broker.channels.slack.people import SlackPeople

logger = logging.getLogger(__name__)

ESCALATION_POSTED = "slack_escalation_posted"
ESCALATION_POST_FAILED = "slack_escalation_post_failed"
SLACK_CHANNEL_PREFIX = "slack:"

Post = tuple[str, int, str]
"""(approval id, step number, Slack channel)."""


def escalation_channels(channels: Collection[str], default_channel: str | None) -> list[str]:
    """The Slack channels an escalation step names (``slack:#escalations``; a bare ``slack`` is the
    default channel)."""
    found: list[str] = []
    for channel in channels:
        if channel == "slack":
            target = default_channel
        elif channel.startswith(SLACK_CHANNEL_PREFIX):
            target = channel[len(SLACK_CHANNEL_PREFIX) :] or default_channel
        else:
            continue
        if target is not None and target not in found:
            found.append(target)
    return found


class EscalationPoster:
    def __init__(
        self,
        store: ApprovalStore,
        posts: EscalationPostStore | None,
        api: SlackApi,
        *,
        people: SlackPeople,
        default_channel: str | None,
        render: Callable[[Approval], Awaitable[ApprovalMessage]],
        audit: Callable[[str, str, Mapping[str, Any]], Awaitable[None]],
        retry_delay: Callable[[int], float],
        sleep: Callable[[float], Awaitable[None]],
        clock: Clock,
        writer: str,
        lease: timedelta,
    ) -> None:
        self._store = store
        self._posts = posts
        """None: no record of posts (each is made by the replica that took the step, as it can)."""
        self._api = api
        self._people = people
        self._default_channel = default_channel
        self._render = render
        self._audit = audit
        self._retry_delay = retry_delay
        self._sleep = sleep
        self._clock = clock
        self._writer = writer
        self._lease = lease
        self._busy: set[Post] = set()

    def owed_by(self, approval: Approval) -> list[Post]:
        """The posts the steps `approval` has taken call for."""
        found: list[Post] = []
        for number, step in enumerate(approval.escalation[: approval.escalation_step], start=1):
            for channel in escalation_channels(step.channels, self._default_channel):
                found.append((approval.id, number, channel))
        return found

    async def post_step(self, escalated: Escalated) -> None:
        """The posts of a step this replica just took."""
        approval = escalated.approval
        for channel in escalation_channels(escalated.step.channels, self._default_channel):
            await self.post(approval, escalated.number, channel)

    async def missing(self, live: Iterable[Approval]) -> list[tuple[Approval, int, str]]:
        """Posts of steps taken on waiting calls that nobody made nor is making (a lapsed claim)."""
        if self._posts is None:
            return []
        waiting = {a.id: a for a in live if a.status is ApprovalStatus.PENDING and a.escalation_step > 0}
        if not waiting:
            return []
        taken = [post for approval in waiting.values() for post in self.owed_by(approval)]
        rows = await self._posts.of(waiting.keys())
        return [
            (waiting[approval_id], number, channel)
            for approval_id, number, channel in owed(taken, rows, self._clock())
            if (approval_id, number, channel) not in self._busy
        ]

    async def post(self, approval: Approval, number: int, channel: str) -> None:
        """Makes one post unless another writer holds it or made it; never raises."""
        key = (approval.id, number, channel)
        if key in self._busy:
            return
        self._busy.add(key)
        try:
            await self._post(approval, number, channel)
        except Exception:
            logger.exception("approval %s: escalation post %d to %s failed", approval.id, number, channel)
        finally:
            self._busy.discard(key)

    async def _post(self, approval: Approval, number: int, channel: str) -> None:
        step = approval.escalation[number - 1]
        added = ", ".join(self._people.mention(name) for name in step.to) or "nobody new"
        headline = (
            f":rotating_light: *Escalated* (step {number}): nobody decided "
            f"`{escape(approval.tool)}` for {escape(approval.agent)} within {step.after_seconds:g} s; "
            f"now also asked: {added}"
        )
        rendered = await self._render(approval)
        blocks = [
            {"type": "section", "block_id": "escalated", "text": {"type": "mrkdwn", "text": headline}},
            *rendered.blocks,
        ]
        failures = 0
        while True:
            if not await self._claim(approval.id, number, channel):
                return  # another replica makes (or made) it
            try:
                posted = await self._api.post_message(
                    channel, text=f"Escalated: {rendered.text}", blocks=blocks
                )
            except SlackRejected as exc:
                logger.error("approval %s: escalation post to %s refused: %s", approval.id, channel, exc)
                await self._settle(approval.id, number, channel, PostOutcome.REFUSED, None)
                details = {"channel": channel, "error": str(exc), "escalation_step": number}
                await self._audit(approval.id, ESCALATION_POST_FAILED, details)
                return
            except SlackUnavailable as exc:
                failures += 1
                delay = exc.retry_after if isinstance(exc, SlackRateLimited) else self._retry_delay(failures)
                logger.warning(
                    "approval %s: escalation post failed (%s); retrying in %gs", approval.id, exc, delay
                )
                await self._sleep(delay)
                current = await self._store.get(approval.id)
                if current is None or current.status is not ApprovalStatus.PENDING:
                    # Decided meanwhile: the original message tells the outcome.
                    await self._settle(approval.id, number, channel, PostOutcome.SKIPPED, None)
                    return
                continue
            if not await self._settle(approval.id, number, channel, PostOutcome.POSTED, posted.ts):
                logger.warning(
                    "approval %s: escalation post %d to %s was made after this replica's claim lapsed",
                    approval.id,
                    number,
                    channel,
                )
            details = {"channel": posted.channel, "ts": posted.ts, "escalation_step": number}
            await self._audit(approval.id, ESCALATION_POSTED, details)
            logger.info("approval %s: escalation step %d posted to %s", approval.id, number, posted.channel)
            return

    async def _claim(self, approval_id: str, number: int, channel: str) -> bool:
        if self._posts is None:
            return True
        now = self._clock()
        return await self._posts.claim(
            approval_id, number, channel, writer=self._writer, now=now, until=now + self._lease
        )

    async def _settle(
        self, approval_id: str, number: int, channel: str, outcome: PostOutcome, ts: str | None
    ) -> bool:
        if self._posts is None:
            return True
        return await self._posts.settle(
            approval_id, number, channel, writer=self._writer, outcome=outcome, ts=ts
        )
