"""A payments MCP server for the spend-limit tests: ``python payments_server.py`` serves stdio.

``transfer(amount, fail)`` records the transfer, unless ``fail`` is ``rpc`` (a JSON-RPC error: the
call is refused, nothing happens) or ``tool`` (an ``isError`` result after recording it: the tool
ran and reported an error). ``transfers()`` lists what was recorded, so a test sees what ran.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError

server = MCPServer("payments", log_level="WARNING")
_done: list[float] = []


@server.tool()
def transfer(amount: float, fail: str = "") -> str:
    """Move `amount`; `fail` is 'rpc' or 'tool' to fail the way an upstream can."""
    if fail == "rpc":
        raise MCPError(-32000, "the payments backend refused the request")
    _done.append(amount)
    if fail == "tool":
        raise ToolError(f"transfer of {amount} bounced after it was booked")
    return f"sent {amount}"


@server.tool()
def transfers() -> list[float]:
    """Every transfer recorded so far, in order."""
    return list(_done)


if __name__ == "__main__":
    server.run("stdio")
