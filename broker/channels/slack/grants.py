"""Slack hears about time-boxed grants: a reply in the held call's thread when its approval made a
grant (``approved + grant for 30 min (10 calls, matching)``) and when that grant is revoked.

A `GrantListener` (broker.approvals.grants): only the replica whose deciding vote made the grant,
or whose desk revoked it, announces it, so each is said once. Listeners must not block, so the
events are queued and posted by `running`; a Slack outage loses an announcement (logged), never a
grant: the grant itself is in the store and on the inbox's grants page.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from broker.approvals.grants import Grant
from broker.approvals.model import Approval
from broker.approvals.ports import ApprovalStore, StoreUnavailable
from broker.channels.slack.client import SlackApi
from broker.channels.slack.errors import SlackError
from broker.channels.slack.notifier import posted_message

logger = logging.getLogger(__name__)


def made_text(grant: Grant) -> str:
    by = ", ".join(grant.created_by)
    return f"approved + {grant.summary()} by {by}: {grant.agent}'s calls like this one run without asking until it ends ({grant.id})"


def revoked_text(grant: Grant) -> str:
    return (
        f"grant {grant.id} revoked by {grant.revoked_by} after {grant.used_calls} of {grant.max_calls} calls"
    )


class SlackGrantAnnouncer:
    def __init__(self, store: ApprovalStore, api: SlackApi) -> None:
        self._store = store
        self._api = api
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, Approval | None, str]](1000)

    def grant_made(self, approval: Approval, grant: Grant) -> None:
        self._queue(grant.approval_id, approval, made_text(grant))

    def grant_revoked(self, grant: Grant) -> None:
        self._queue(grant.approval_id, None, revoked_text(grant))

    def _queue(self, approval_id: str, approval: Approval | None, text: str) -> None:
        try:
            self._send.send_nowait((approval_id, approval, text))
        except anyio.WouldBlock:
            logger.warning("Slack grant announcement dropped (queue full): %s", text)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._post_forever)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()

    async def _post_forever(self) -> None:
        async for approval_id, approval, text in self._receive:
            try:
                if approval is None or posted_message(approval) is None:
                    approval = await self._store.get(approval_id)
                message = posted_message(approval) if approval is not None else None
                if message is None:
                    continue  # the call was never shown in Slack
                await self._api.post_message(message.channel, text=text, thread_ts=message.ts)
            except (SlackError, StoreUnavailable) as exc:
                logger.warning("Slack grant announcement for %s not posted: %s", approval_id, exc)
