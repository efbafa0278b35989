"""The broker's own HTTP routes (liveness, readiness, metrics, upstream and tool status) and the ASGI
entry that sends `/mcp` past the web framework."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from broker.approvals.health import StoreHealth
from broker.approvals.ports import StoreUnavailable
from broker.config.policy_file import PolicyFile
from broker.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from broker.observability.metrics import BrokerMetrics
from broker.proxy.auth.metadata import ProtectedResourceMetadata
from broker.proxy.upstream.pool import UpstreamPool
from broker.store.migrate import head_revision
from broker.store.sql import SqlApprovalStore


def add_health_routes(
    api: FastAPI,
    *,
    draining: Callable[[], bool],
    health: StoreHealth,
    store: SqlApprovalStore,
    policy_file: PolicyFile,
    broker_metrics: BrokerMetrics,
) -> None:
    # Straight on the app rather than through an APIRouter, so the routes stay plain app routes;
    # the function names are their operation ids in /openapi.json.
    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz() -> JSONResponse:
        # Not ready while draining, while calls are refused (the same check a call makes,
        # probe included), or while the schema is not this code's
        if draining():
            return JSONResponse({"status": "draining"}, status_code=503)
        if not health.up and not await health.recheck():
            return JSONResponse({"status": "unavailable", "store": health.reason}, status_code=503)
        try:
            current = await store.schema_revision() == head_revision()
        except StoreUnavailable as exc:
            return JSONResponse({"status": "unavailable", "store": str(exc)}, status_code=503)
        if not current:
            return JSONResponse(
                {
                    "status": "unavailable",
                    "store": "the database schema is not at this broker's newest migration "
                    "(run 'broker db upgrade' with this version)",
                },
                status_code=503,
            )
        ready: dict[str, Any] = {"status": "ready"}
        if (rejection := policy_file.rejection) is not None:
            # Still ready: the last good policy decides every call, but someone must fix the file
            ready["policy"] = {"rejected_reload": rejection.to_json()}
        return JSONResponse(ready)

    @api.get("/metrics")
    async def metrics() -> Response:
        return Response(await broker_metrics.render(), media_type=METRICS_CONTENT_TYPE)


def add_status_routes(
    api: FastAPI,
    *,
    pool: UpstreamPool,
    policy_file: PolicyFile,
    tool_decisions: Callable[[], list[dict[str, Any]]],
) -> None:
    @api.get("/api/upstreams")
    async def upstreams() -> list[dict[str, Any]]:
        return [
            {"name": s.name, "state": s.state, "last_error": s.last_error, "tools": s.tool_count}
            for s in pool.status()
        ]

    @api.get("/api/tools")
    async def tools() -> JSONResponse:
        return JSONResponse(
            {
                "policy_revision": policy_file.holder.current.revision,
                "tools": tool_decisions(),
            }
        )


class BrokerASGI:
    """Sends `/mcp` straight to the MCP endpoint so the hot path skips the web framework's routing."""

    def __init__(self, mcp: ASGIApp, api: ASGIApp, metadata: ProtectedResourceMetadata | None = None) -> None:
        self._mcp = mcp
        self._api = api
        self._metadata = metadata

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in ("/mcp", "/mcp/"):
            await self._mcp(scope, receive, send)
        elif self._metadata is not None and scope["type"] == "http" and scope["path"] in self._metadata.paths:
            await self._metadata(scope, receive, send)
        else:
            await self._api(scope, receive, send)
