"""The OpenAI Agents SDK against `broker serve --demo`: what the model is shown for a held call.

    pip install openai-agents==0.24.0
    python examples/agents/openai_agents_demo.py      # prints PENDING HUMAN APPROVAL ... approval id
    # approve it at http://127.0.0.1:8765/ (demo / demo), then run it again: the order's result

It calls the tool through the SDK's own tool pipeline, without a model. In an agent, pass the same
server to `Agent(mcp_servers=[server])`. The SDK's default 5 s timeout is fine: the broker answers a
held call "pending" after 4 s (hold_budget), and the identical call later returns the outcome.
With failure_error_function left as is, a timeout would show the model only "An error occurred while
running the tool. Please try again.", never why.
"""

import asyncio
import json
import os

from agents import Agent
from agents.mcp import MCPServerStreamableHttp, MCPUtil
from agents.tool_context import ToolContext

URL = os.environ.get("BROKER_URL", "http://127.0.0.1:8765/mcp")
KEY = os.environ.get("BROKER_API_KEY")  # the demo takes anonymous agents
ORDER = {"symbol": "BTCUSD", "side": "buy", "quantity": 10, "price": 90000}


async def main() -> None:
    headers = {"Authorization": f"Bearer {KEY}"} if KEY else {}
    async with MCPServerStreamableHttp({"url": URL, "headers": headers}, name="broker") as server:
        agent = Agent(name="trader", instructions="Place the orders you are asked to.", mcp_servers=[server])
        tools = {tool.name: tool for tool in await server.list_tools()}
        place_order = MCPUtil.to_function_tool(
            tools["place_order"], server, convert_schemas_to_strict=False, agent=agent
        )
        arguments = json.dumps(ORDER)
        context = ToolContext(
            context=None, tool_name="place_order", tool_call_id="call-1", tool_arguments=arguments
        )
        output = await place_order.on_invoke_tool(context, arguments)
        # One text item, or a list when the result has several content blocks.
        items = output if isinstance(output, list) else [output]
        print("\n".join(item["text"] if isinstance(item, dict) else str(item) for item in items))


if __name__ == "__main__":
    asyncio.run(main())
