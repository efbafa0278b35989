"""What the broker says about itself to an agent: the handshake answers of both protocol eras.

`tasks` is whether calls may be held here (an approval service is attached): held calls can be
awaited as tasks, which exist only in the 2025-11-25 handshake era.
"""

from __future__ import annotations

from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS

from broker import __version__
from broker.proxy.upstream.base import JsonObject

SERVER_NAME = "mcp-approval-broker"
SERVER_INFO_META_KEY = "io.modelcontextprotocol/serverInfo"


def capabilities(*, tasks: bool, modern: bool = False) -> JsonObject:
    answer: JsonObject = {"tools": {"listChanged": True}}
    if tasks and not modern:
        answer["tasks"] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
    return answer


def server_info() -> JsonObject:
    return {"name": SERVER_NAME, "version": __version__}


def initialize_result(params: JsonObject | None, *, tasks: bool) -> JsonObject:
    """The handshake answer: the client's version when we speak it, else our newest handshake version."""
    requested = (params or {}).get("protocolVersion")
    version = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
    return {
        "protocolVersion": version,
        "capabilities": capabilities(tasks=tasks),
        "serverInfo": server_info(),
        "instructions": "Tool calls pass through a policy gateway; some calls wait for human approval.",
    }


def discover_result(*, tasks: bool) -> JsonObject:
    """The 2026-07-28 replacement for the handshake."""
    return {
        "supportedVersions": list(MODERN_PROTOCOL_VERSIONS),
        "capabilities": capabilities(tasks=tasks, modern=True),
        "resultType": "complete",
        "_meta": {SERVER_INFO_META_KEY: server_info()},
    }
