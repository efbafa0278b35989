"""An MCP server over stdio whose ``tools/list`` hands out its tools two per page.

Run as ``python paged_server.py COUNT`` to offer tools ``tool_1`` .. ``tool_COUNT``.
"""

from __future__ import annotations

import sys

import anyio
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp_types import ListToolsResult, PaginatedRequestParams, Tool

PAGE_SIZE = 2


def build(count: int) -> Server[object]:
    tools = [
        Tool(name=f"tool_{number}", description=f"Tool number {number}.", input_schema={"type": "object"})
        for number in range(1, count + 1)
    ]

    async def list_tools(
        ctx: ServerRequestContext[object], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        start = int(params.cursor) if params is not None and params.cursor else 0
        end = start + PAGE_SIZE
        return ListToolsResult(tools=tools[start:end], next_cursor=str(end) if end < len(tools) else None)

    return Server("paged", on_list_tools=list_tools)


async def main(count: int) -> None:
    server = build(count)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]))
