"""Micro-benchmark of the CallToolResult shape check every forwarded tools/call result passes.

Times `broker.proxy.result_shape.tool_result_problem` on three well-formed results (the demo
exchange's one-text-block ticker with structuredContent, a five-block result with every kind
of content, and a 100-block one) and, for scale, the official SDK's pydantic
``CallToolResult.model_validate`` on the same results. Each figure is the best of --repeat
loops of --number calls, divided by --number.

    python bench/result_shape.py [--number 20000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import timeit
from typing import Any

from mcp_types import CallToolResult

from broker.proxy.result_shape import tool_result_problem

TICKER: dict[str, Any] = {
    "content": [
        {
            "type": "text",
            "text": '{"symbol": "BTCUSD", "bid": 97250.0, "ask": 97251.5, "last": 97250.5, "volume_24h": 1234.5}',
        }
    ],
    "structuredContent": {
        "symbol": "BTCUSD",
        "bid": 97250.0,
        "ask": 97251.5,
        "last": 97250.5,
        "volume_24h": 1234.5,
    },
    "isError": False,
}
EVERY_KIND: dict[str, Any] = {
    "content": [
        {"type": "text", "text": "hello", "annotations": {"audience": ["user"]}},
        {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"},
        {"type": "audio", "data": "UklGRg==", "mimeType": "audio/wav"},
        {"type": "resource_link", "uri": "file:///a.txt", "name": "a.txt"},
        {"type": "resource", "resource": {"uri": "file:///b.txt", "text": "b"}, "_meta": {}},
    ],
    "isError": False,
    "_meta": {"io.example/trace": "abc"},
}
HUNDRED_BLOCKS: dict[str, Any] = {"content": [{"type": "text", "text": f"line {n}"} for n in range(100)]}


def per_call_us(call: Any, number: int, repeat: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"{'result':<26} {'tool_result_problem µs':>23} {'pydantic model_validate µs':>27}")
    for name, result in (
        ("ticker (1 text block)", TICKER),
        ("every kind (5 blocks)", EVERY_KIND),
        ("100 text blocks", HUNDRED_BLOCKS),
    ):
        assert tool_result_problem(result, "2025-11-25") is None
        ours = per_call_us(lambda r=result: tool_result_problem(r, "2025-11-25"), args.number, args.repeat)
        theirs = per_call_us(
            lambda r=result: CallToolResult.model_validate(r), args.number // 10, args.repeat
        )
        print(f"{name:<26} {ours:>23.2f} {theirs:>27.2f}")


if __name__ == "__main__":
    main()
