"""Shared pieces of the web inbox tests: approvers with passwords, a sign-in helper, an approval feed."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx2

from broker.approvals import Approval, NewApproval
from broker.channels.web import hash_password
from broker.config.settings import BrokerSettings
from tests.e2e.harness import RunningBroker, approver_accounts, exchange_server, make_settings

# A cheap scrypt cost keeps sign-ins fast in tests; the format and the code path are the real ones.
PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "mallory": "mallory-pw-3"}
TEST_COST = 2**10

POLICY = """
version: "1"
default: deny
rules:
  - tool: get_*
    action: allow
  - tool: place_order
    action: allow
  - tool: place_order
    when: {"args.quantity": {"gt": 5}}
    action: require_approval
    timeout: 120
    approvers: ["@trading-leads"]
    reason: "orders above 5 units need a second pair of eyes"
  - tool: binance_us_cust_cancel_order
    action: require_approval
    timeout: 120
    reason: "cancels are irreversible"
  - tool: withdraw
    action: deny
    reason: "withdrawals are never made by agents"
"""


def accounts_with_passwords() -> tuple[Any, ...]:
    return tuple(
        replace(account, password_hash=hash_password(PASSWORDS[account.name], n=TEST_COST))
        for account in approver_accounts()
    )


def web_settings(
    tmp_path: Path, *, servers: dict[str, Any] | None = None, **overrides: Any
) -> BrokerSettings:
    return make_settings(
        tmp_path,
        POLICY,
        exchange_server() if servers is None else servers,
        approvers=accounts_with_passwords(),
        **overrides,
    )


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None, "the page has no CSRF token"
    return found.group(1)


@asynccontextmanager
async def http_signed_in(running: RunningBroker, user: str) -> AsyncIterator[httpx2.AsyncClient]:
    """An HTTP client holding a password session for `user`."""
    async with httpx2.AsyncClient(base_url=running.url, timeout=30) as http:
        form = await http.get("/login")
        response = await http.post(
            "/login",
            data={
                "username": user,
                "password": PASSWORDS[user],
                "csrf_token": csrf_token(form.text),
                "next": "/",
            },
        )
        assert response.status_code == 303, response.text
        yield http


class ApprovalFeed:
    """Every approval the broker opens, so tests wait on the one they caused instead of on time."""

    def __init__(self) -> None:
        self.opened: list[Approval] = []
        self._arrived = anyio.Event()

    async def approval_opened(self, approval: Approval) -> None:
        self.opened.append(approval)
        self._arrived.set()
        self._arrived = anyio.Event()

    async def approval_updated(self, approval: Approval) -> None:
        pass

    async def wait_for(self, matches: Callable[[Approval], bool]) -> Approval:
        while True:
            for approval in self.opened:
                if matches(approval):
                    return approval
            await self._arrived.wait()


def order(price: float, **changes: Any) -> dict[str, Any]:
    """A big order (held for approval); `price` tells tests' orders apart."""
    return {"symbol": "BTCUSD", "side": "buy", "quantity": 10, "price": price, **changes}


def text_of(result: object) -> str:
    return " ".join(getattr(block, "text", "") for block in getattr(result, "content", []))


async def hold(
    running: RunningBroker,
    arguments: dict[str, Any],
    *,
    revision: str | None = None,
    agent: str = "trader",
    **requirement: Any,
) -> Approval:
    """A new approval for a big order, held by the policy's place_order rule for two trading leads'
    eyes; `requirement` sets more of it (quorum, editable arguments), and an `agent` of its own lets
    a test list only its approvals."""
    policy = running.broker.policy_file.holder.current
    approval, created = await running.broker.approvals.open(
        NewApproval(
            agent=agent,
            server="exchange",
            tool="place_order",
            upstream_tool="place_order",
            arguments=arguments,
            policy_revision=revision or policy.revision,
            rule="rules[2] 'place_order'",
            rule_reason="orders above 5 units need a second pair of eyes",
            timeout=timedelta(minutes=5),
            approvers=("@trading-leads",),
            **requirement,
        )
    )
    assert created
    return approval
