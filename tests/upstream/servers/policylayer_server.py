"""An MCP server with the tool names of PolicyLayer's example policies (Intercept's POLICY.md and
testdata, the hosted docs), so those policies can be run unchanged in front of a real upstream.
``python policylayer_server.py`` serves stdio.

Every tool records its call; ``fail: "rpc"`` refuses with a JSON-RPC error instead (nothing
happens upstream, so a reserved counter must be rolled back). ``calls()`` lists what ran.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

server = MCPServer("policylayer-examples", log_level="WARNING")
_calls: list[str] = []


TOOLS = (
    "create_charge",
    "create_refund",
    "delete_customer",
    "create_issue",
    "create_pull_request",
    "delete_repository",
    "transfer_repository",
    "list_webhooks",
    "list_customers",
    "delete_account",
)


def _tool(tool: str) -> Any:
    # One signature for all: the examples' arguments (amount, currency, reason, title, ...).
    def run(
        amount: Any = None,
        currency: str = "",
        reason: str = "",
        title: str = "",
        customer: str = "",
        name: str = "",
        fail: str = "",
    ) -> str:
        if fail == "rpc":
            raise MCPError(-32000, f"{tool}: the backend refused the request")
        _calls.append(tool)
        return f"{tool} done"

    return run


for _name in TOOLS:
    server.add_tool(_tool(_name), name=_name, description=f"{_name} (records the call)")


@server.tool()
def calls() -> list[str]:
    """Every call that ran upstream, in order."""
    return list(_calls)


if __name__ == "__main__":
    server.run("stdio")
