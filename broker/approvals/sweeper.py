"""Reading the approvals a sweep works through: all of them, oldest first, a page at a time.

A sweep must reach every approved call (an upstream that comes back after an outage may find
thousands waiting) and every released one (a replica that died may have left many behind), in
the order the calls were made, without holding one large result in memory. Pages follow the
store's (created_at, id) order, so rows that change status while the sweep reads do not make it
skip or repeat others.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection

from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.ports import ApprovalStore, ListPosition

PAGE_SIZE = 100
RELEASES_IN_FLIGHT = 100
"""Releases one replica forwards at once from a sweep; the rest stay approved, oldest first,
for the next pass, so a large backlog does not open thousands of upstream requests together."""


async def oldest_first(
    store: ApprovalStore, statuses: Collection[ApprovalStatus], *, page_size: int = PAGE_SIZE
) -> AsyncIterator[Approval]:
    """Every approval in `statuses`, oldest first (ties by id), read `page_size` rows at a time."""
    after: ListPosition | None = None
    while True:
        page = await store.list(statuses=statuses, limit=page_size, after=after, oldest_first=True)
        for approval in page:
            yield approval
        if len(page) < page_size:
            return
        after = ListPosition.of(page[-1])
