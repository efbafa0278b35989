"""``GET /api/tools/events``: tool definitions first seen, changed and accepted (broker.catalogue.tool_events).

Query: ``tool`` (a name, or ``server__tool``), ``server``, ``limit`` (1-500, default 100): the
newest events, oldest first, as ``broker tools events`` prints them. Takes an approver's bearer
token, as the decisions API does (a diff can quote what an upstream tells the model). An
unreachable store is 503.

No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from broker.approvals.approvers import ApproverDirectory
from broker.approvals.model import Approver
from broker.approvals.ports import StoreUnavailable
from broker.catalogue.pins import PinStore
from broker.channels.grants_api import bearer_approver
from broker.channels.sso.api_tokens import SsoApproverTokens


def build_tool_events_router(
    pins: PinStore, directory: ApproverDirectory, sso: SsoApproverTokens | None = None
) -> APIRouter:
    router = APIRouter(prefix="/api/tools", tags=["tools"])
    Caller = Annotated[Approver, Depends(bearer_approver(directory, sso))]

    @router.get("/events")
    async def tool_events(
        _: Caller,
        tool: str | None = None,
        server: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        owner, qualified, bare = (tool or "").partition("__")
        if qualified and server is None:
            tool, server = bare, owner
        try:
            found = await pins.events(tool=tool, server=server, limit=limit)
        except StoreUnavailable as exc:
            raise HTTPException(503, f"cannot read tool events: {exc}") from None
        return {
            "events": [
                {
                    "id": event.id,
                    "server": event.server,
                    "tool": event.tool,
                    "kind": event.kind.value,
                    "old_hash": event.old_hash,
                    "new_hash": event.new_hash,
                    "actor": event.actor,
                    "at": event.at.isoformat(),
                    "changes": list(event.changes),
                }
                for event in found
            ]
        }

    return router
