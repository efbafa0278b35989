"""The grants API: approvers list and revoke time-boxed grants (also used by the CLI).

``GET /api/grants[?active=true]`` lists grants newest first; ``POST /api/grants/{id}/revoke``
ends one at once (200 with ``"revoked": false`` when it had been revoked already). Both take an
approver's bearer token, as the decisions API does. A grant is asked for beside an approval:
``POST /api/approvals/{id}/approve`` with ``{"grant": {"minutes": 30, "scope": "matching",
"max_calls": 10}}`` (see broker.approvals.grants).

No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime.
"""

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from broker.approvals.approvers import ApproverDirectory
from broker.approvals.grant_desk import GrantDesk
from broker.approvals.grants import Grant, GrantRequest, GrantScope
from broker.approvals.model import Approver
from broker.approvals.ports import GrantNotFound, StoreUnavailable
from broker.channels.sso.api_tokens import SsoApproverTokens


class GrantBody(BaseModel):
    minutes: float = Field(gt=0, le=60 * 24 * 366)
    scope: Literal["identical", "matching"] = "identical"
    max_calls: int | None = Field(default=None, ge=1)

    def request(self) -> GrantRequest:
        return GrantRequest(self.minutes * 60, GrantScope(self.scope), self.max_calls)


def bearer_approver(
    directory: ApproverDirectory, sso: SsoApproverTokens | None = None
) -> Callable[[Request], Awaitable[Approver]]:
    """A FastAPI dependency: the approver whose token (or, with `sso`, identity provider access
    token) the request carries, else 401."""

    async def approver(request: Request) -> Approver:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(
                401,
                "an approver token is required: 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": "Bearer"},
            )
        account = directory.by_token(token.strip())
        if account is None and sso is not None and sso.applies_to(token.strip()):
            verdict = await sso.approver(token.strip())
            if isinstance(verdict, str):
                raise HTTPException(401, verdict, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return verdict
        if account is None:
            raise HTTPException(
                401,
                "unknown approver token: no approver in this broker's configuration has it "
                "(approvers.<name>.token, token_env or token_sha256)",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return account.approver

    return approver


def grant_json(grant: Grant, now: datetime) -> dict[str, Any]:
    def iso(moment: datetime | None) -> str | None:
        return moment.astimezone(UTC).isoformat() if moment is not None else None

    return {
        "id": grant.id,
        "approval_id": grant.approval_id,
        "state": grant.state(now),
        "agent": grant.agent,
        "server": grant.server,
        "tool": grant.tool,
        "rule": grant.rule,
        "policy_revision": grant.policy_revision,
        "scope": grant.scope.value,
        "arguments_sha256": grant.arguments_hash,
        "created_by": list(grant.created_by),
        "created_at": iso(grant.created_at),
        "expires_at": iso(grant.expires_at),
        "max_calls": grant.max_calls,
        "used_calls": grant.used_calls,
        "revoked_at": iso(grant.revoked_at),
        "revoked_by": grant.revoked_by,
        "summary": grant.summary(),
    }


def build_grants_router(
    desk: GrantDesk, directory: ApproverDirectory, sso: SsoApproverTokens | None = None
) -> APIRouter:
    router = APIRouter(prefix="/api/grants", tags=["grants"])
    Caller = Annotated[Approver, Depends(bearer_approver(directory, sso))]

    @router.get("")
    async def list_grants(
        caller: Caller, active: bool = False, limit: Annotated[int, Query(ge=1, le=500)] = 100
    ) -> dict[str, Any]:
        try:
            grants = await desk.list(active=active, limit=limit)
        except StoreUnavailable as exc:
            raise HTTPException(503, f"the approval store is unavailable: {exc}") from exc
        now = desk.now()
        return {"grants": [grant_json(grant, now) for grant in grants]}

    @router.post("/{grant_id}/revoke")
    async def revoke(grant_id: str, caller: Caller) -> dict[str, Any]:
        try:
            grant, revoked = await desk.revoke(grant_id, approver=caller)
        except GrantNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except StoreUnavailable as exc:
            raise HTTPException(
                503, f"the approval store is unavailable; nothing was revoked: {exc}"
            ) from exc
        return {**grant_json(grant, desk.now()), "revoked": revoked}

    return router
