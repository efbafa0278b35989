"""`broker demo calls`: an agent that shows what the demo's policy does to four calls.

It connects to a running ``broker serve --demo`` as an anonymous agent over streamable HTTP and
makes, in order:

1. ``get_ticker BTCUSD``: allowed, forwarded, answered by the exchange;
2. ``get_ticker DOGEUSD``: allowed, and the exchange explains its own error;
3. ``withdraw``: denied by the policy, with the reason the model reads;
4. ``place_order`` of 10 BTC: above the policy's threshold, so it is held for a human. The agent
   gets the "pending approval" answer once its hold budget (4 s) is spent, and the approval waits
   in the inbox, where it can be approved or denied (or with the command printed at the end).

Every line printed is what the agent saw. Exit status 2 (with a message) when the broker cannot
be reached or does not behave like the demo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TextIO

import anyio
import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

DEFAULT_URL = "http://127.0.0.1:8765"
DEMO_APPROVER_TOKEN = "demo-approver-token"
"""The demo approver's token for the decisions API and `broker approvals`; public, so the demo
listens on localhost only (see broker.config.demo.demo_settings)."""
APPROVAL_META_KEY = "io.github.mcp-approval-broker/approval"
WHOLE_RUN_SECONDS = 120.0
"""A bound on the whole run: the held call answers after the hold budget (4 s in the demo)."""

CALLS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("allowed", "get_ticker", {"symbol": "BTCUSD"}),
    ("allowed, the tool explains its error", "get_ticker", {"symbol": "DOGEUSD"}),
    ("denied by the policy", "withdraw", {"asset": "BTC", "amount": 1, "address": "bc1q-demo"}),
    (
        "held for a human (orders above 5 units)",
        "place_order",
        {"symbol": "BTCUSD", "side": "buy", "quantity": 10, "price": 90000},
    ),
)


class DemoAgentError(Exception):
    """The broker could not be reached, or answered unlike the demo; the message says which."""


@dataclass(frozen=True, slots=True)
class Seen:
    tool: str
    is_error: bool
    text: str
    approval_id: str | None


def _text(result: Any) -> str:
    structured = getattr(result, "structured_content", None)
    if structured is not None and not getattr(result, "is_error", False):
        return json.dumps(structured)
    texts = [getattr(block, "text", "") for block in getattr(result, "content", None) or ()]
    return " ".join(text for text in texts if text)


def _find_transport_error(exc: BaseException) -> httpx2.TransportError | None:
    if isinstance(exc, httpx2.TransportError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _find_transport_error(inner)) is not None:
                return found
    return None


async def make_calls(base_url: str, out: TextIO) -> list[Seen]:
    """Makes the four calls against the broker at `base_url` and prints what the agent saw."""
    endpoint = f"{base_url.rstrip('/')}/mcp"
    seen: list[Seen] = []
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=90))
    try:
        with anyio.fail_after(WHOLE_RUN_SECONDS):
            async with Client(streamable_http_client(endpoint, http_client=http), mode="legacy") as client:
                print(f"agent connected to {endpoint} (anonymous, as the demo allows)\n", file=out)
                for number, (expectation, tool, arguments) in enumerate(CALLS, start=1):
                    print(f"{number}. {tool} {json.dumps(arguments)}  [{expectation}]", file=out)
                    out.flush()
                    result = await client.call_tool(tool, arguments)
                    meta = getattr(result, "meta", None) or {}
                    summary = meta.get(APPROVAL_META_KEY) if isinstance(meta, dict) else None
                    approval_id = summary.get("approvalId") if isinstance(summary, dict) else None
                    found = Seen(tool, bool(result.is_error), _text(result), approval_id)
                    seen.append(found)
                    label = "error" if found.is_error else "result"
                    print(f"   {label}: {found.text}\n", file=out)
    except TimeoutError:
        raise DemoAgentError(
            f"the broker at {base_url} did not answer within {WHOLE_RUN_SECONDS:g} s"
        ) from None
    except Exception as exc:
        # The SDK's task groups wrap a refused connection in exception groups
        transport = _find_transport_error(exc)
        if transport is None:
            raise
        raise DemoAgentError(
            f"cannot reach the broker at {base_url} ({transport}); start it first: broker serve --demo"
        ) from None
    finally:
        await http.aclose()
    held = seen[-1].approval_id
    if held is None:
        raise DemoAgentError(
            f"place_order was not held (is {base_url} a broker started with --demo?): {seen[-1].text}"
        )
    url_option = "" if base_url.rstrip("/") == DEFAULT_URL else f" --url {base_url.rstrip('/')}"
    print(
        f"Approval {held} waits in the inbox at {base_url.rstrip('/')}/ "
        "(sign in as demo, password demo).\n"
        "Or decide it from here:\n"
        f"  broker approvals approve {held} --token {DEMO_APPROVER_TOKEN}{url_option}\n"
        f"  broker approvals deny {held} --reason 'not today' --token {DEMO_APPROVER_TOKEN}{url_option}\n"
        "The agent learns the outcome when it calls place_order again with the same arguments "
        "(or check_approval).",
        file=out,
    )
    return seen
