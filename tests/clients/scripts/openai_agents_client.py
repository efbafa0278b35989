"""Drives the OpenAI Agents SDK's MCP tool pipeline without a model; prints what the model would see.

Runs in its own virtualenv (tests/clients/requirements-openai-agents.txt). Usage:

    python openai_agents_client.py '<scenario JSON>'

Scenario: {"url", "apiKey", "timeout"?: seconds or null for the SDK default, "steps": [{"name", "arguments"}]}.
Each tools/call goes through `MCPUtil.to_function_tool(...).on_invoke_tool`, the function the agent
runner calls, so a timeout is turned into the tool-error text the model is given, exactly as in a run.
One JSON line per step: {"index", "seen": <the tool output the model gets, as text>, "seconds"}.
The session is opened once for all steps and closed at the end, as `async with server:` does in an app.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from agents import Agent
from agents.mcp import MCPServerStreamableHttp, MCPUtil
from agents.tool_context import ToolContext


def as_text(output: Any) -> str:
    # A tool output is a string, a {"type": "text", "text": ...} item, or a list of such items.
    if isinstance(output, str):
        return output
    if isinstance(output, dict):
        return str(output.get("text", json.dumps(output)))
    if isinstance(output, list):
        return "\n".join(as_text(item) for item in output)
    return str(output)


async def main(scenario: dict[str, Any]) -> None:
    options: dict[str, Any] = {}
    if scenario.get("timeout") is not None:
        options["client_session_timeout_seconds"] = scenario["timeout"]
    server = MCPServerStreamableHttp(
        {"url": scenario["url"], "headers": {"Authorization": f"Bearer {scenario['apiKey']}"}},
        name="broker",
        **options,
    )
    async with server:
        agent = Agent(name="probe", mcp_servers=[server])
        tools = {tool.name: tool for tool in await server.list_tools()}
        for index, step in enumerate(scenario["steps"]):
            function_tool = MCPUtil.to_function_tool(
                tools[step["name"]], server, convert_schemas_to_strict=False, agent=agent
            )
            arguments = json.dumps(step.get("arguments", {}))
            context = ToolContext(
                context=None, tool_name=step["name"], tool_call_id=f"call-{index}", tool_arguments=arguments
            )
            started = time.monotonic()
            output = await function_tool.on_invoke_tool(context, arguments)
            line = {"index": index, "seen": as_text(output), "seconds": round(time.monotonic() - started, 2)}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
