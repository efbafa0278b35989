"""A raw JSON-RPC stdio MCP server that lists its tools properly but answers some calls badly.

Each tool's name picks the ``result`` its ``tools/call`` answers with (see `RESULTS`); the
arguments are ignored. Written by hand, without an SDK, because an SDK server would refuse to
send these. ``--protocol VERSION`` sets the version it answers ``initialize`` with.

    python malformed_results.py [--protocol 2025-11-25]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

RESULTS: dict[str, Any] = {
    "well_formed": {
        "content": [{"type": "text", "text": "fine", "futureField": {"x": 1}}],
        "structuredContent": {"ok": True},
        "isError": False,
        "someFutureKey": [1, 2, 3],
    },
    "content_not_a_list": {"content": "not-a-list", "isError": "maybe"},
    "text_not_a_string": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": 42}]},
    "no_content": {"structuredContent": {"ok": True}},
    "audio": {"content": [{"type": "audio", "data": "AAAA", "mimeType": "audio/wav"}]},
    "not_an_object": "just a string",
}


def tool(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"Answers with the '{name}' result.",
        "inputSchema": {"type": "object", "properties": {}},
    }


def answer(message: dict[str, Any], protocol: str) -> dict[str, Any] | None:
    method = message.get("method")
    if "id" not in message:
        return None  # a notification
    reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
    if method == "initialize":
        reply["result"] = {
            "protocolVersion": protocol,
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "malformed-results", "version": "1"},
        }
    elif method == "tools/list":
        reply["result"] = {"tools": [tool(name) for name in RESULTS]}
    elif method == "tools/call":
        name = (message.get("params") or {}).get("name")
        if name not in RESULTS:
            reply["error"] = {"code": -32602, "message": f"Unknown tool: {name}"}
        else:
            reply["result"] = RESULTS[name]
    elif method == "ping":
        reply["result"] = {}
    else:
        reply["error"] = {"code": -32601, "message": f"Method not found: {method}"}
    return reply


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", default="2025-11-25")
    protocol = parser.parse_args().protocol
    for line in sys.stdin:
        if not line.strip():
            continue
        reply = answer(json.loads(line), protocol)
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
