"""PolicyLayer's own example policies, loaded unchanged, in front of a real MCP server with a real
SDK client: what the agent sees for allowed, denied (it reads ``on_deny``), hidden and
rate-limited calls, and a counter rolled back when the upstream call fails.

The policies are the files in tests/policy/formats/data (sources in SOURCES.md). The broker's
clock is pinned to the middle of an hour, so calendar windows cannot roll over mid-test.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from tests.e2e.harness import REPO, make_settings, running_broker
from tests.e2e.test_approvals_flow import text_of
from tests.store.conftest import ManualClock

pytestmark = pytest.mark.anyio

DATA = REPO / "tests/policy/formats/data"


def examples() -> dict[str, Any]:
    server = REPO / "tests/upstream/servers/policylayer_server.py"
    return {"examples": {"command": sys.executable, "args": [str(server)]}}


def broker_with(tmp_path: Path, name: str) -> Any:
    settings = make_settings(tmp_path, (DATA / name).read_text(), examples())
    return running_broker(settings, clock=ManualClock(datetime(2026, 3, 4, 10, 30, tzinfo=UTC)))


async def ran(client: Any) -> list[str]:
    result = await client.call_tool("calls", {})
    return list(result.structured_content["result"])


async def test_intercept_stripe_example(tmp_path: Path) -> None:
    async with broker_with(tmp_path, "intercept_testdata_valid_policy.yaml") as running:
        with anyio.fail_after(60):
            async with running.client() as client:
                allowed = await client.call_tool("create_charge", {"amount": 100, "currency": "usd"})
                assert not allowed.is_error, text_of(allowed)
                for arguments, words in [
                    ({"amount": 60000, "currency": "usd"}, "Single charge cannot exceed $500.00"),
                    ({"amount": 100, "currency": "gbp"}, "Only USD and EUR charges are permitted"),
                    ({"currency": "usd"}, "Single charge cannot exceed $500.00"),
                ]:
                    denied = await client.call_tool("create_charge", arguments)
                    assert denied.is_error and words in text_of(denied), text_of(denied)
                deletion = await client.call_tool("delete_customer", {"customer": "cus_1"})
                assert deletion.is_error
                assert "Customer deletion is not permitted via AI agents" in text_of(deletion)

                # "daily refund count": lt 10, so 9 refunds a day. A refund the backend refuses
                # is rolled back and does not use one of them.
                with pytest.raises(MCPError, match="refused the request"):
                    await client.call_tool("create_refund", {"amount": 5, "fail": "rpc"})
                for _ in range(9):
                    refund = await client.call_tool("create_refund", {"amount": 5})
                    assert not refund.is_error, text_of(refund)
                tenth = await client.call_tool("create_refund", {"amount": 5})
                assert tenth.is_error and "Daily refund limit (10) reached" in text_of(tenth)
                assert "T00:00:00Z" in text_of(tenth)  # the day is calendar-aligned in UTC
                assert await ran(client) == ["create_charge"] + ["create_refund"] * 9


async def test_intercept_github_example_hides_denies_and_rate_limits(tmp_path: Path) -> None:
    async with broker_with(tmp_path, "intercept_policy_md_github.yaml") as running:
        with anyio.fail_after(60):
            async with running.client() as client:
                listed = {tool.name for tool in (await client.list_tools()).tools}
                assert {"create_issue", "create_pull_request", "calls"} <= listed
                # Hidden tools are gone; so is a tool every call of which is denied (the native
                # listing rule; PolicyLayer would still list it), though a call reads on_deny.
                assert not listed & {"transfer_repository", "list_webhooks", "delete_repository"}
                hidden = await client.call_tool("transfer_repository", {"name": "r"})
                assert hidden.is_error
                deletion = await client.call_tool("delete_repository", {"name": "r"})
                assert deletion.is_error
                assert "Repository deletion is not permitted via AI agents" in text_of(deletion)
                for _ in range(5):
                    assert not (await client.call_tool("create_issue", {"title": "t"})).is_error
                sixth = await client.call_tool("create_issue", {"title": "t"})
                assert sixth.is_error and "Hourly limit of 5 new issues reached" in text_of(sixth)
                assert await ran(client) == ["create_issue"] * 5


async def test_intercept_default_deny_refuses_unlisted_tools(tmp_path: Path) -> None:
    async with broker_with(tmp_path, "intercept_testdata_default_deny_policy.yaml") as running:
        with anyio.fail_after(60):
            async with running.client() as client:
                listed = {tool.name for tool in (await client.list_tools()).tools}
                assert listed == {"create_issue"}  # read_file is allowed but this server lacks it
                refused = await client.call_tool("list_customers", {})
                assert refused.is_error


async def test_hosted_json_example(tmp_path: Path) -> None:
    async with broker_with(tmp_path, "hosted_docs_custom.json") as running:
        with anyio.fail_after(60):
            async with running.client() as client:
                listed = {tool.name for tool in (await client.list_tools()).tools}
                assert listed == {"list_customers", "create_refund", "create_charge"}
                assert (await client.call_tool("delete_account", {})).is_error
                assert not (await client.call_tool("create_refund", {"reason": "duplicate"})).is_error
                assert (await client.call_tool("create_refund", {})).is_error
                big = await client.call_tool("create_charge", {"amount": 20000})
                assert big.is_error and "Charges over 10000 need a person" in text_of(big)
                for _ in range(3):
                    assert not (await client.call_tool("create_charge", {"amount": 10})).is_error
                fourth = await client.call_tool("create_charge", {"amount": 10})
                assert fourth.is_error and "limit 'charges' reached" in text_of(fourth)
