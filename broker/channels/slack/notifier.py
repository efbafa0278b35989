"""Keeps one Slack message per approval truthful: posted while the approval waits, rewritten on every
change, and put right after restarts, outages and races between replicas.

What it takes to finish the job is kept in the store, so any replica can finish what another began:

* where the message is: the approval's slack_channel and slack_ts. While a post is under way,
  slack_ts holds a claim (``claim:<writer>:<until>``) set by compare-and-set, so one replica posts
  and every other one leaves the message to it; the claim of a writer that died lapses at <until>
  (Unix time), and a writer that finds its lapsed claim taken over deletes its own duplicate.
* what the message shows: the status named by the approval's last ``notified`` or ``slack_updated``
  audit event, recorded once Slack has accepted the message.

A worker (one task per approval and process) brings the message in line with the store and, while
Slack fails, retries with capped exponential backoff for as long as it takes: Slack's availability
never touches an approval's fate, and no outage is long enough to make the broker give up. Failures
are logged on every attempt and recorded in the audit trail on attempts 1, 2, 4, 8, ..., so a long
outage leaves a handful of events rather than hundreds. Changes made in this process start a worker
at once; a reconciler on every replica looks through the store on start and then periodically for
messages that are missing or stale because the process that should have written them stopped.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import anyio
from anyio.abc import TaskGroup

from broker.approvals.audit import AuditEvent, AuditEventKind
from broker.approvals.call_view import CallContexts
from broker.approvals.clock import Clock, utc_now
from broker.approvals.escalation import Escalated
from broker.approvals.escalation_posts import EscalationPostStore
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.ports import ApprovalError, ApprovalStore, StoreUnavailable
from broker.channels.delivery.claims import Claim
from broker.channels.delivery.reconciler import Glance, Reconciler
from broker.channels.delivery.retry import DEFAULT_RETRY_SCHEDULE, RetrySchedule, Sleep, worth_recording
from broker.channels.slack.blocks import ApprovalMessage, approval_message
from broker.channels.slack.client import PostedMessage, SlackApi
from broker.channels.slack.errors import SlackRateLimited, SlackRejected, SlackUnavailable
from broker.channels.slack.escalation_posts import (
    SLACK_CHANNEL_PREFIX,
    EscalationPoster,
)
from broker.channels.slack.people import SlackPeople
from broker.channels.slack.shown import UPDATED, ShownMessages
from broker.policy.grants import GrantAllowance

logger = logging.getLogger(__name__)

AUDIT_ACTOR = "slack"
POST_FAILED = "slack_post_failed"
UPDATE_FAILED = "slack_update_failed"
DELETE_FAILED = "slack_delete_failed"
DUPLICATE_DELETED = "slack_duplicate_deleted"


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


def _message_of(approval: Approval) -> PostedMessage | None:
    if approval.slack_channel and approval.slack_ts and Claim.of(approval.slack_ts) is None:
        return PostedMessage(approval.slack_channel, approval.slack_ts)
    return None


posted_message = _message_of
"""The approval's Slack message once it is really posted (None while unposted or only claimed)."""


@dataclass(frozen=True, slots=True)
class _Unrecorded:
    """A message Slack accepted that is not stored with its approval yet."""

    claim: str
    requested_channel: str
    message: PostedMessage
    status: ApprovalStatus
    thread_replies: list[str]


@dataclass(slots=True)
class _Worker:
    again: bool = False
    """A change arrived while the worker was busy: look at the approval once more before stopping."""
    failure_event: str = POST_FAILED
    status: ApprovalStatus | None = None
    unrecorded: _Unrecorded | None = None
    duplicate: PostedMessage | None = None
    replies: tuple[PostedMessage, list[str]] | None = None
    finished: anyio.Event = field(default_factory=anyio.Event)


class SlackNotifier:
    """The approval listener that posts and updates the Slack messages, and their reconciler."""

    def __init__(
        self,
        store: ApprovalStore,
        api: SlackApi,
        *,
        people: SlackPeople,
        default_channel: str | None,
        schedule: RetrySchedule = DEFAULT_RETRY_SCHEDULE,
        sleep: Sleep = anyio.sleep,
        clock: Clock = utc_now,
        reconcile_interval: float = 30.0,
        reconcile_sleep: Sleep = anyio.sleep,
        look_back: timedelta = timedelta(days=7),
        claim_lease: timedelta = timedelta(minutes=2),
        writer: str | None = None,
        calls: CallContexts | None = None,
        grants: Callable[[Approval], GrantAllowance | None] | None = None,
        escalation_posts: EscalationPostStore | None = None,
    ) -> None:
        self._store = store
        self._grants = grants
        self._calls = calls
        self._api = api
        self._people = people
        self._default_channel = default_channel
        self._schedule = schedule
        self._sleep = sleep
        self._clock = clock
        self._reconcile_interval = reconcile_interval
        self._reconcile_sleep = reconcile_sleep
        self._claim_lease = claim_lease
        self._writer = writer or uuid.uuid4().hex[:12]
        self._workers: dict[str, _Worker] = {}
        self._shown = ShownMessages(store)
        self._owed: set[str] = set()
        """Posts this process began while the approval waited: still made if it is decided meanwhile."""
        self._tasks: TaskGroup | None = None
        self._escalations = EscalationPoster(
            store,
            escalation_posts,
            api,
            people=people,
            default_channel=default_channel,
            render=self._render,
            audit=self._audit,
            retry_delay=schedule.delay,
            sleep=sleep,
            clock=clock,
            writer=self._writer,
            lease=claim_lease,
        )
        self._reconciler = Reconciler(
            store,
            clock=clock,
            look_back=look_back,
            concerns=self._concerns,
            glance=self._glance,
            start=self._start,
            found_live=self._post_missing_escalations,
        )

    # -- the approval listener ---------------------------------------------------------------------

    async def approval_opened(self, approval: Approval) -> None:
        if slack_destination(approval, self._default_channel) is None:
            return
        await self._bring_in_line(approval.id)

    async def approval_updated(self, approval: Approval) -> None:
        if slack_destination(approval, self._default_channel) is None and approval.slack_ts is None:
            return  # its rule keeps it out of Slack
        await self._bring_in_line(approval.id)

    async def approval_escalated(self, escalated: Escalated) -> None:
        """The step's new posts, by the replica that took it (broker.channels.slack.escalation_posts).
        The original message shows the escalation through the usual worker (see broker.channels.slack.shown)."""
        await self._escalations.post_step(escalated)

    async def settled(self, approval_id: str) -> None:
        """Returns once no worker of this process is busy with the approval's message."""
        worker = self._workers.get(approval_id)
        if worker is not None:
            await worker.finished.wait()

    # -- the reconciler ----------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SlackNotifier]:
        """The reconciler loop (a pass on start, then one every `reconcile_interval` seconds) and
        the workers it starts."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            tasks.start_soon(self._reconcile_forever)
            try:
                yield self
            finally:
                tasks.cancel_scope.cancel()
                self._tasks = None

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
            except StoreUnavailable as exc:
                logger.warning("Slack reconciliation: the approval store is unavailable: %s", exc)
            except Exception:
                logger.exception("Slack reconciliation failed (will try again)")
            await self._reconcile_sleep(self._reconcile_interval)

    async def reconcile(self) -> None:
        """One pass over the store (broker.channels.delivery.reconciler): a worker for every
        approval whose message is owed but missing, or stale since the previous pass."""
        if self._tasks is None:
            raise RuntimeError("SlackNotifier.running() must be entered before reconciling")
        await self._reconciler.reconcile()

    async def _post_missing_escalations(self, live: Collection[Approval]) -> None:
        assert self._tasks is not None
        for waiting, step, channel in await self._escalations.missing(live):
            self._tasks.start_soon(self._escalations.post, waiting, step, channel)

    def _glance(self, approval: Approval, now: datetime) -> Glance:
        """What the approval's row alone says about its message (no further store reads)."""
        if approval.id in self._workers:
            return Glance.BUSY
        message = _message_of(approval)
        if message is None and slack_destination(approval, self._default_channel) is None:
            return Glance.FINE
        if approval.status in (self._shown.refused_at(approval.id), self._shown.settled_at(approval.id)):
            return Glance.FINE
        if message is not None:
            # While pending, the message can only show the prompt it was posted with.
            return Glance.FINE if approval.status is ApprovalStatus.PENDING else Glance.SUSPECT
        claim = Claim.of(approval.slack_ts)
        if claim is not None and not claim.lapsed(now):
            return Glance.BUSY
        if approval.status is ApprovalStatus.PENDING or claim is not None:
            return Glance.MISSING
        return Glance.SUSPECT  # decided before it was posted: whether a post is owed is in its audit trail

    def _concerns(self, approval: Approval) -> bool:
        return approval.slack_ts is not None or slack_destination(approval, self._default_channel) is not None

    def _start(self, approval_id: str) -> None:
        assert self._tasks is not None
        self._tasks.start_soon(self._bring_in_line_reporting, approval_id)

    async def _bring_in_line_reporting(self, approval_id: str) -> None:
        try:
            await self._bring_in_line(approval_id)
        except Exception:
            logger.exception("approval %s: keeping its Slack message current failed", approval_id)

    # -- the worker ----------------------------------------------------------------------------------

    async def _bring_in_line(self, approval_id: str) -> None:
        worker = self._workers.get(approval_id)
        if worker is not None:
            worker.again = True
            return
        worker = self._workers[approval_id] = _Worker()
        try:
            await self._work(approval_id, worker)
        finally:
            del self._workers[approval_id]
            self._owed.discard(approval_id)
            worker.finished.set()

    async def _work(self, approval_id: str, worker: _Worker) -> None:
        """Steps until the message tells the truth, backing off while Slack (or the store) fails."""
        failures = 0
        while True:
            worker.again = False
            try:
                progressed = await self._step(approval_id, worker)
            except SlackRejected as exc:
                logger.error("approval %s: %s; not retrying", approval_id, exc)
                await self._audit(
                    approval_id,
                    worker.failure_event,
                    {"error": str(exc), "attempt": failures + 1, "final": True},
                )
                if worker.status is not None:
                    self._shown.refuse(approval_id, worker.status)
                return
            except (SlackUnavailable, StoreUnavailable) as exc:
                failures += 1
                delay = (
                    exc.retry_after if isinstance(exc, SlackRateLimited) else self._schedule.delay(failures)
                )
                logger.warning(
                    "approval %s: %s; retrying in %gs (attempt %d)", approval_id, exc, delay, failures
                )
                # Slack asking us to slow down is no failure; the store being down cannot record one.
                outage = isinstance(exc, SlackUnavailable) and not isinstance(exc, SlackRateLimited)
                if outage and worth_recording(failures):
                    details = {"error": str(exc), "attempt": failures, "final": False, "retry_in": delay}
                    await self._audit(approval_id, worker.failure_event, details)
                await self._sleep(delay)
                continue
            failures = 0
            if not progressed and not worker.again:
                return

    async def _step(self, approval_id: str, worker: _Worker) -> bool:
        """One write towards the truth; False when there is nothing (more) to write."""
        if worker.duplicate is not None:
            worker.failure_event = DELETE_FAILED
            await self._delete_duplicate(approval_id, worker.duplicate)
            worker.duplicate = None
            return True
        if worker.unrecorded is not None:
            await self._record_post(approval_id, worker, worker.unrecorded)
            return True
        current = await self._store.get(approval_id)
        if current is None:
            return False
        worker.status = current.status
        if self._shown.refused_at(approval_id) is current.status:
            return False
        message = _message_of(current)
        if message is None:
            return await self._post_if_owed(current, worker)
        if await self._update_if_stale(current, message, worker):
            return True
        if worker.replies is not None:
            worker.failure_event = POST_FAILED
            thread, replies = worker.replies
            while replies:
                await self._api.post_message(thread.channel, text=replies[0], thread_ts=thread.ts)
                replies.pop(0)
            worker.replies = None
            return True
        return False

    async def _post_if_owed(self, current: Approval, worker: _Worker) -> bool:
        channel = slack_destination(current, self._default_channel)
        if channel is None:
            return False
        now = self._clock()
        claim = Claim.of(current.slack_ts)
        if claim is not None and claim.writer != self._writer and not claim.lapsed(now):
            # Another replica is posting; it reads the approval again once it stored the message.
            return False
        if not await self._post_owed(current, claim):
            self._shown.settle(current.id, current.status)
            return False
        self._owed.add(current.id)
        mine = str(Claim(self._writer, (now + self._claim_lease).timestamp()))
        claimed, won = await self._store.swap_slack_message(
            current.id, expected_ts=current.slack_ts, channel=None, ts=mine
        )
        if not won:
            return True  # somebody moved first: look again
        rendered = await self._render(claimed)
        worker.failure_event = POST_FAILED
        try:
            message = await self._api.post_message(channel, text=rendered.text, blocks=rendered.blocks)
        except BaseException:
            await self._give_back(current.id, mine)
            raise
        logger.info(
            "approval %s: posted to Slack channel %s (ts %s)", current.id, message.channel, message.ts
        )
        worker.unrecorded = _Unrecorded(mine, channel, message, claimed.status, rendered.thread_replies)
        await self._record_post(current.id, worker, worker.unrecorded)
        return True

    async def _post_owed(self, current: Approval, lapsed_claim: Claim | None) -> bool:
        """A prompt is owed while the approval waits; after that only if a post was begun in time
        (and failed, or its writer stopped), so the channel still learns how the request ended."""
        if current.status is ApprovalStatus.PENDING or lapsed_claim is not None or current.id in self._owed:
            return True
        return any(record.event == POST_FAILED for record in await self._store.audit_trail(current.id))

    async def _record_post(self, approval_id: str, worker: _Worker, posted: _Unrecorded) -> None:
        message = posted.message
        stored, won = await self._store.swap_slack_message(
            approval_id,
            expected_ts=posted.claim,
            channel=message.channel,
            ts=message.ts,
            audit=AuditEvent(
                AuditEventKind.NOTIFIED,
                AUDIT_ACTOR,
                {
                    "channel": message.channel,
                    "requested_channel": posted.requested_channel,
                    "ts": message.ts,
                    "thread_replies": len(posted.thread_replies),
                    "status": posted.status.value,
                },
            ),
        )
        worker.unrecorded = None
        if not won:
            # The claim lapsed before Slack answered and another writer took the post over.
            logger.warning(
                "approval %s: another writer posted its Slack message (%s); deleting this one (%s)",
                approval_id,
                stored.slack_ts,
                message.ts,
            )
            worker.duplicate = message
            return
        self._shown.settle(approval_id, posted.status)
        if posted.thread_replies:
            worker.replies = (message, list(posted.thread_replies))
        # The worker's next step reads the approval again: a change made while the post was in
        # flight (on any replica, which left the message to this writer) is shown right after.

    async def _render(self, approval: Approval) -> ApprovalMessage:
        # Without the recent decisions: the message shows the tool, its risk and the condition.
        context = await self._calls.context(approval, recent=False) if self._calls is not None else None
        grant = (
            self._grants(approval)
            if self._grants is not None and approval.status is ApprovalStatus.PENDING
            else None
        )
        return approval_message(approval, mention=self._people.mention, context=context, grant=grant)

    async def _give_back(self, approval_id: str, claim: str) -> None:
        """Releases a claim after a failed post, so that the next attempt (here or elsewhere) can
        begin before the claim would lapse."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self._store.swap_slack_message(approval_id, expected_ts=claim, channel=None, ts=None)
            except ApprovalError as exc:
                logger.warning("approval %s: claim %s stays until it lapses: %s", approval_id, claim, exc)

    async def _update_if_stale(self, current: Approval, message: PostedMessage, worker: _Worker) -> bool:
        if await self._shown.shown(current) is current.status:
            self._shown.settle(current.id, current.status)
            return False
        rendered = await self._render(current)
        worker.failure_event = UPDATE_FAILED
        await self._api.update_message(message, text=rendered.text, blocks=rendered.blocks)
        self._shown.rewritten(current)
        logger.info("approval %s: Slack message updated (%s)", current.id, current.status.value)
        try:
            await self._store.append_audit(
                AuditEvent(
                    UPDATED,
                    AUDIT_ACTOR,
                    {
                        "status": current.status.value,
                        "version": current.version,
                        "escalation_step": current.escalation_step,
                        "arguments_sha256": current.arguments_hash,
                    },
                    approval_id=current.id,
                )
            )
        except ApprovalError as exc:
            # The message is right; without the record, a reconciler may rewrite it once more.
            logger.error("approval %s: could not record the Slack update: %s", current.id, exc)
        return True

    async def _delete_duplicate(self, approval_id: str, duplicate: PostedMessage) -> None:
        try:
            await self._api.delete_message(duplicate)
        except SlackRejected as exc:
            if exc.code != "message_not_found":
                raise
        await self._audit(approval_id, DUPLICATE_DELETED, {"channel": duplicate.channel, "ts": duplicate.ts})

    async def _audit(self, approval_id: str, event: str, details: Mapping[str, Any]) -> None:
        try:
            await self._store.append_audit(AuditEvent(event, AUDIT_ACTOR, details, approval_id=approval_id))
        except ApprovalError as exc:
            logger.error("approval %s: could not record %s in the audit trail: %s", approval_id, event, exc)
