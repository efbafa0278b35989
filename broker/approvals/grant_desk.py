"""Listing and revoking time-boxed grants (the API, the CLI and the web inbox go through here).

Any configured approver may list grants and revoke one: revoking only ever makes the broker ask
again, so it needs no quorum. Revocation is immediate on every replica (the next `GrantStore.use`
finds the row revoked) and is recorded on the audit trail of the approval that made the grant.
"""

from __future__ import annotations

import logging
from datetime import datetime

from broker.approvals.clock import Clock, utc_now
from broker.approvals.grants import Grant, GrantListener
from broker.approvals.model import Approver
from broker.approvals.ports import GrantStore

logger = logging.getLogger(__name__)


class GrantDesk:
    def __init__(self, store: GrantStore, *, clock: Clock = utc_now) -> None:
        self.store = store
        self._clock = clock
        self._listeners: list[GrantListener] = []

    def add_listener(self, listener: GrantListener) -> None:
        self._listeners.append(listener)

    def now(self) -> datetime:
        return self._clock()

    async def list(self, *, active: bool = False, limit: int = 100) -> list[Grant]:
        """Newest first; with `active`, only grants that can still let a call through."""
        return await self.store.list(active_at=self._clock() if active else None, limit=limit)

    async def revoke(self, grant_id: str, *, approver: Approver) -> tuple[Grant, bool]:
        """Raises GrantNotFound, StoreUnavailable. (grant, False) when it was revoked already."""
        grant, revoked = await self.store.revoke(grant_id, by=approver.name, at=self._clock())
        if revoked:
            for listener in self._listeners:
                try:
                    listener.grant_revoked(grant)
                except Exception:
                    logger.exception("grant listener %s failed on %s", type(listener).__name__, grant.id)
        return grant, revoked
