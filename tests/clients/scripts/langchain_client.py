"""Drives langchain-mcp-adapters' tools without a model; prints what the model would see.

Runs in its own virtualenv (tests/clients/requirements-langchain.txt: the adapters pin mcp<2).
Usage:

    python langchain_client.py '<scenario JSON>'

Scenario: {"url", "apiKey", "progress"?: bool, "steps": [{"name", "arguments"}]}. The tools come from
`MultiServerMCPClient.get_tools()` with its defaults: every tool call opens a session of its own and
ends it afterwards, as in a LangGraph agent. With "progress" the client gets an `on_progress`
callback, so its calls carry a progress token. Each call is invoked as the agent's ToolNode invokes
it, with a tool-call dict, so the ToolMessage printed is what the model is given. One JSON line per
step: {"index", "seen": <the ToolMessage content as text>, "status", "artifact", "seconds", "progress"}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from langchain_mcp_adapters.callbacks import Callbacks
from langchain_mcp_adapters.client import MultiServerMCPClient


def as_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            block.get("text", json.dumps(block)) if isinstance(block, dict) else str(block)
            for block in content
        )
    return str(content)


async def main(scenario: dict[str, Any]) -> None:
    progress: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None, context: Any) -> None:
        progress.append(message or "")

    callbacks = Callbacks(on_progress=on_progress) if scenario.get("progress") else None
    client = MultiServerMCPClient(
        {
            "broker": {
                "transport": "streamable_http",
                "url": scenario["url"],
                "headers": {"Authorization": f"Bearer {scenario['apiKey']}"},
            }
        },
        callbacks=callbacks,
    )
    tools = {tool.name: tool for tool in await client.get_tools()}
    for index, step in enumerate(scenario["steps"]):
        call = {
            "type": "tool_call",
            "id": f"call-{index}",
            "name": step["name"],
            "args": step.get("arguments", {}),
        }
        started = time.monotonic()
        message = await tools[step["name"]].ainvoke(call)
        artifact = message.artifact
        line = {
            "index": index,
            "seen": as_text(message.content),
            "status": message.status,
            "artifact": artifact if artifact is None or isinstance(artifact, dict) else str(artifact),
            "seconds": round(time.monotonic() - started, 2),
            "progress": progress[:],
        }
        print(json.dumps(line, default=str), flush=True)
        progress.clear()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
