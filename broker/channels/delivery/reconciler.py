"""The reconciler's passes over the store: which approvals' messages a channel's workers look at
again, because the process that should have written them stopped, or another replica changed them.

Each pass looks at the approvals still waiting or being forwarded; at those that finished since
they were last seen (so a change made anywhere is looked at, also by replicas that never saw the
approval waiting); and, on the first pass, at those created within `look_back` that finished, for
changes a stopped process never showed. The channel glances at each row; the reconciler starts a
worker for every approval whose message is owed but missing, and for every one whose message was
already suspect (maybe stale, or maybe owed) in the previous pass, unchanged, with no worker on it.
A change made here is put right at once by its own worker, and one made on another replica by that
replica's: waiting a pass keeps the replicas from rewriting the same message twice. The first pass
does not wait: whatever it finds was left behind before this process started.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime, timedelta

import anyio

from broker.approvals.clock import Clock
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.ports import ApprovalStore, ListPosition

LIVE_STATUSES = frozenset({ApprovalStatus.PENDING, ApprovalStatus.APPROVED, ApprovalStatus.RELEASED})
FINISHED_STATUSES = frozenset(status for status in ApprovalStatus if status.is_terminal)
PAGE_SIZE = 1000
PASS_OVERLAP = timedelta(minutes=1)
"""How far back of the previous pass's start a pass looks for finished approvals: covers
transactions that committed after their created_at, and clocks of replicas slightly apart."""


class Glance(enum.Enum):
    FINE = "fine"
    BUSY = "busy"
    """A worker here, or another writer's claim, is on it."""
    MISSING = "missing"
    """No message although one is owed: post it now (the claim keeps other replicas out)."""
    SUSPECT = "suspect"
    """Maybe stale or maybe owed; a worker finds out, once nobody put it right for a whole pass."""


class Reconciler:
    """The state kept from one pass to the next, for one channel in one process."""

    def __init__(
        self,
        store: ApprovalStore,
        *,
        clock: Clock,
        look_back: timedelta,
        concerns: Callable[[Approval], bool],
        glance: Callable[[Approval, datetime], Glance],
        start: Callable[[str], None],
        found_live: Callable[[Collection[Approval]], Awaitable[None]],
    ) -> None:
        """`concerns`: whether a finished approval has (or had to have) a message; `glance`: what
        its row alone says about its message; `start`: a worker on the approval; `found_live`:
        hears the live approvals each pass lists."""
        self._store = store
        self._clock = clock
        self._look_back = look_back
        self._concerns = concerns
        self._glance = glance
        self._start = start
        self._found_live = found_live
        self._watched: set[str] = set()
        self._suspects: dict[str, int] = {}
        self._finished_since: datetime | None = None
        self._passes = anyio.Lock()

    async def reconcile(self) -> None:
        """One pass over the store (see the module docstring)."""
        async with self._passes:
            first = self._finished_since is None
            started = self._clock()
            live = {approval.id: approval for approval in await self._all(LIVE_STATUSES)}
            await self._found_live(live.values())
            candidates = dict(live)
            # Listed after the live ones: an approval finishing in between is in one list or the other.
            since = self._finished_since or started - self._look_back
            candidates.update(await self._finished_since_then(since))
            for approval_id in self._watched - candidates.keys():
                approval = await self._store.get(approval_id)
                if approval is not None:
                    candidates[approval_id] = approval
            now = self._clock()
            suspects: dict[str, int] = {}
            watched = set(live)
            for approval in candidates.values():
                glance = self._glance(approval, now)
                if glance is Glance.FINE:
                    continue
                watched.add(approval.id)
                if glance is Glance.MISSING or (
                    glance is Glance.SUSPECT
                    and (first or self._suspects.get(approval.id) == approval.version)
                ):
                    self._start(approval.id)
                elif glance is Glance.SUSPECT:
                    suspects[approval.id] = approval.version
            self._suspects = suspects
            self._watched = watched
            self._finished_since = started - PASS_OVERLAP

    async def _finished_since_then(self, since: datetime) -> dict[str, Approval]:
        """Finished approvals created at or after `since` that have (or had to have) a message."""
        found: dict[str, Approval] = {}
        after: ListPosition | None = None
        while True:
            page = await self._store.list(statuses=FINISHED_STATUSES, limit=PAGE_SIZE, after=after)
            for approval in page:
                if approval.created_at < since:
                    return found
                if self._concerns(approval):
                    found[approval.id] = approval
            if len(page) < PAGE_SIZE:
                return found
            after = ListPosition.of(page[-1])

    async def _all(self, statuses: Collection[ApprovalStatus]) -> list[Approval]:
        found: list[Approval] = []
        after: ListPosition | None = None
        while True:
            page = await self._store.list(statuses=statuses, limit=PAGE_SIZE, after=after)
            found.extend(page)
            if len(page) < PAGE_SIZE:
                return found
            after = ListPosition.of(page[-1])
