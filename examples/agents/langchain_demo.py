"""langchain-mcp-adapters against `broker serve --demo`: the ToolMessage a held call gives the model.

    pip install langchain-mcp-adapters==0.3.2
    python examples/agents/langchain_demo.py          # status=error: PENDING HUMAN APPROVAL ...
    # approve it at http://127.0.0.1:8765/ (demo / demo), then run it again: status=success, the order

The tool is invoked as a LangGraph ToolNode invokes it (a tool-call dict), without a model; in an
agent, pass `await client.get_tools()` to `create_agent(model, tools)`.
"""

import asyncio
import os

from langchain_mcp_adapters.client import MultiServerMCPClient

URL = os.environ.get("BROKER_URL", "http://127.0.0.1:8765/mcp")
KEY = os.environ.get("BROKER_API_KEY")  # the demo takes anonymous agents
ORDER = {"symbol": "BTCUSD", "side": "buy", "quantity": 10, "price": 90000}


async def main() -> None:
    headers = {"Authorization": f"Bearer {KEY}"} if KEY else {}
    client = MultiServerMCPClient(
        {"broker": {"transport": "streamable_http", "url": URL, "headers": headers}}
    )
    tools = {tool.name: tool for tool in await client.get_tools()}
    message = await tools["place_order"].ainvoke(
        {"type": "tool_call", "id": "call-1", "name": "place_order", "args": ORDER}
    )
    text = (
        message.content
        if isinstance(message.content, str)
        else "\n".join(block["text"] for block in message.content)
    )
    print(f"status={message.status}: {text}")


if __name__ == "__main__":
    asyncio.run(main())
