"""A broker whose approvers sign on at the local authorization server (tests/authserver).

Alice and bob are approvers matched by e-mail; bob has no configured group, so only the
provider's ``groups`` claim (mapped through ``web.sso.groups``) makes him a trading lead. Carol
exists at the provider but is no approver here. Mallory keeps a password and no e-mail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio

from broker.approvals import Approval
from broker.approvals.approvers import ApproverAccount
from broker.config.oauth import IntrospectionSettings
from broker.config.sso import SsoSettings
from broker.config.web import WebSettings
from tests.authserver.server import AuthServer
from tests.e2e.harness import RunningBroker, exchange_server, make_settings, running_broker
from tests.web.support import POLICY, ApprovalFeed, accounts_with_passwords, order

CLIENT_ID = "broker-inbox"
API_AUDIENCE = "mcp-broker-api"
EMAILS = {"alice": "Alice@Example.com", "bob": "bob@example.com"}


def sso_accounts() -> tuple[ApproverAccount, ...]:
    accounts = []
    for account in accounts_with_passwords():
        if account.name in EMAILS:
            account = replace(account, email=EMAILS[account.name], password_hash=None)
        if account.name == "bob":
            account = replace(account, groups=frozenset())
        accounts.append(account)
    return tuple(accounts)


def register_inbox_client(auth: AuthServer) -> SsoSettings:
    """Registers the inbox as a confidential client; its redirect URI is added once the broker listens."""
    client_id, secret = auth.register_client(grant_types=("authorization_code",), client_id=CLIENT_ID)
    return SsoSettings(
        issuer=auth.issuer,
        client_id=client_id,
        client_secret=secret,
        match="email",
        groups_claim="groups",
        groups={"trading-leads": "trading-leads"},
        api_audience=API_AUDIENCE,
        label="Sign in with Example SSO",
    )


def introspecting(
    auth: AuthServer, sso: SsoSettings, *, secret: str | None = None, endpoint: str | None = None
) -> SsoSettings:
    """`sso` with opaque access tokens asked of `auth`'s introspection endpoint, as a client of its own."""
    client_id, real_secret = auth.register_client(client_id="broker-api", grant_types=())
    return replace(
        sso,
        introspection=IntrospectionSettings(
            endpoint or f"{auth.url}/introspect", client_id, secret or real_secret, 30.0
        ),
    )


@asynccontextmanager
async def sso_broker(
    auth: AuthServer, tmp_path: Path, sso: SsoSettings | None = None
) -> AsyncIterator[RunningBroker]:
    settings = make_settings(
        tmp_path,
        POLICY,
        exchange_server(),
        approvers=sso_accounts(),
        web=WebSettings(sso=sso or register_inbox_client(auth)),
    )
    async with running_broker(settings) as running:
        client = auth.clients[CLIENT_ID].metadata
        client["redirect_uris"].append(f"{running.url}/signin/oidc/callback")
        client.setdefault("post_logout_redirect_uris", []).append(f"{running.url}/login")
        yield running


@dataclass
class HeldOrder:
    approval: Approval | None = None
    result: Any = None
    """The agent's answer, once the call was decided (after the `held_order` block)."""


@asynccontextmanager
async def held_order(running: RunningBroker, feed: ApprovalFeed, price: float) -> AsyncIterator[HeldOrder]:
    """An agent's big order, held for approval while the block runs; the block must decide it."""
    held = HeldOrder()
    async with running.client() as client, anyio.create_task_group() as tasks:

        async def agent() -> None:
            held.result = await client.call_tool("place_order", order(price))

        tasks.start_soon(agent)
        held.approval = await feed.wait_for(lambda item: item.arguments.get("price") == price)
        yield held
