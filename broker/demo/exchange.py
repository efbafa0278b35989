"""A paper-trading exchange MCP server: realistic tool names, no real money.

Run: ``python -m broker.demo.exchange`` (stdio) or ``python -m broker.demo.exchange --http PORT``.

Every refusal is a ``ToolError``: the SDK passes its message to the model as the tool's error text
(any other exception becomes a bare "Error executing tool ...").
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, field
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

PRICES = {"BTCUSD": 97_250.0, "ETHUSD": 3_410.5, "SOLUSD": 182.25}


@dataclass
class Book:
    balances: dict[str, float] = field(default_factory=lambda: {"USD": 250_000.0, "BTC": 1.5, "ETH": 20.0})
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001))


def build_server() -> MCPServer:
    book = Book()
    server = MCPServer("demo-exchange", instructions="A paper-trading exchange. Prices are fixed.")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def get_ticker(symbol: str) -> dict[str, Any]:
        """Last price for a trading pair such as BTCUSD."""
        if symbol not in PRICES:
            raise ToolError(f"unknown symbol {symbol!r}; known symbols: {', '.join(sorted(PRICES))}")
        return {"symbol": symbol, "price": PRICES[symbol]}

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def get_balances() -> dict[str, float]:
        """Account balances per asset."""
        return dict(book.balances)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def list_open_orders() -> list[dict[str, Any]]:
        """Open orders on the account."""
        return [order for order in book.orders.values() if order["status"] == "open"]

    @server.tool(annotations=ToolAnnotations(destructive_hint=False))
    def place_order(symbol: str, side: str, quantity: float, price: float) -> dict[str, Any]:
        """Place a limit order. side is 'buy' or 'sell'."""
        if symbol not in PRICES:
            raise ToolError(f"unknown symbol {symbol!r}; known symbols: {', '.join(sorted(PRICES))}")
        if side not in ("buy", "sell"):
            raise ToolError(f"side must be 'buy' or 'sell', not {side!r}")
        if quantity <= 0 or price <= 0:
            raise ToolError(
                f"quantity and price must be positive (got quantity {quantity:g}, price {price:g})"
            )
        order_id = f"ord-{next(book.ids)}"
        order = {"order_id": order_id, "symbol": symbol, "side": side, "quantity": quantity, "price": price}
        book.orders[order_id] = {**order, "status": "open"}
        return book.orders[order_id]

    @server.tool(annotations=ToolAnnotations(destructive_hint=True))
    def binance_us_cust_cancel_order(order_id: str) -> dict[str, Any]:
        """Cancel an open order. Irreversible."""
        order = book.orders.get(order_id)
        if order is None:
            raise ToolError(f"no order {order_id!r}; list_open_orders shows the open ones")
        if order["status"] != "open":
            raise ToolError(f"order {order_id!r} is already {order['status']}")
        order["status"] = "cancelled"
        return order

    @server.tool(annotations=ToolAnnotations(destructive_hint=True, open_world_hint=True))
    def withdraw(asset: str, amount: float, address: str) -> dict[str, Any]:
        """Withdraw funds to an external address. Irreversible."""
        if amount <= 0:
            raise ToolError(f"amount must be positive (got {amount:g})")
        if book.balances.get(asset, 0.0) < amount:
            raise ToolError(
                f"insufficient {asset} balance: {book.balances.get(asset, 0.0):g} available, {amount:g} asked"
            )
        book.balances[asset] -= amount
        return {"asset": asset, "amount": amount, "address": address, "status": "sent"}

    return server


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m broker.demo.exchange")
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT")
    args = parser.parse_args()
    server = build_server()
    if args.http is not None:
        import uvicorn

        uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=args.http, log_level="warning")
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
