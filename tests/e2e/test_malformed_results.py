"""An upstream that answers tools/call with something that is not a CallToolResult.

A real misbehaving server process (tests/upstream/servers/malformed_results.py) behind a real
broker, driven by the official SDK client: the agent gets an error result it can parse and
read, and a held call released into such an answer ends ``failed`` with the problem audited.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from broker.approvals import ApprovalStatus
from tests.e2e.harness import REPO, make_settings, running_broker
from tests.e2e.test_approvals_flow import text_of, watch

pytestmark = pytest.mark.anyio

SERVER = str(REPO / "tests/upstream/servers/malformed_results.py")
POLICY = """
version: "1"
default: allow
rules:
  - tool: "*"
    when: {"args.hold": true}
    action: require_approval
    timeout: 60
"""


def malformed_server(protocol: str = "2025-11-25") -> dict[str, Any]:
    return {"odd": {"command": sys.executable, "args": [SERVER, "--protocol", protocol]}}


async def test_an_allowed_malformed_result_becomes_an_error_the_agent_can_read(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, malformed_server())) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                bad = await client.call_tool("content_not_a_list", {})
                missing = await client.call_tool("text_not_a_string", {})
                fine = await client.call_tool("well_formed", {})
    assert bad.is_error
    assert text_of(bad) == (
        "The upstream server 'odd' answered the call to 'content_not_a_list' with a malformed result "
        "(content must be an array, got string); the broker did not pass it on. The call may have run "
        "upstream, so check before retrying anything that must not happen twice."
    )
    assert missing.is_error
    assert "(content[1].text must be a string, got number)" in text_of(missing)
    # Unknown keys, in the result and in a block, are forward compatibility, not malformation.
    assert not fine.is_error and text_of(fine) == "fine"
    assert fine.structured_content == {"ok": True}


async def test_a_result_missing_content_or_not_an_object_is_refused(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, malformed_server())) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                no_content = await client.call_tool("no_content", {})
                with pytest.raises(MCPError, match="neither a result object nor an error"):
                    await client.call_tool("not_an_object", {})
    assert no_content.is_error
    assert "(content is missing)" in text_of(no_content)


async def test_results_are_judged_by_the_version_the_upstream_negotiated(tmp_path: Path) -> None:
    # Audio content arrived in 2025-03-26; a 2024-11-05 server may not send it.
    async with running_broker(make_settings(tmp_path, POLICY, malformed_server("2024-11-05"))) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                old = await client.call_tool("audio", {})
    assert old.is_error
    assert "(content[0].type 'audio' is not a content type of protocol 2024-11-05" in text_of(old)
    async with running_broker(make_settings(tmp_path, POLICY, malformed_server("2025-03-26"))) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                newer = await client.call_tool("audio", {})
    assert not newer.is_error
    assert newer.content[0].type == "audio"


async def test_a_held_call_released_into_a_malformed_result_fails_and_the_audit_says_why(
    tmp_path: Path,
) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, malformed_server())) as running:
        feed = watch(running)
        outcomes: dict[str, Any] = {}
        with anyio.fail_after(30):
            async with running.client() as client, anyio.create_task_group() as tasks:

                async def agent(tool: str) -> None:
                    outcomes[tool] = await client.call_tool(tool, {"hold": True})

                for tool in ("content_not_a_list", "well_formed"):
                    tasks.start_soon(agent, tool)
                    approval = await feed.opened.receive()
                    assert approval.tool == tool
                    async with running.approver("alice") as alice:
                        decided = await alice.post(f"/api/approvals/{approval.id}/approve")
                        assert decided.status_code == 200, decided.text
                    outcomes[f"{tool} id"] = approval.id
            async with running.approver("bob") as bob:
                failed = (await bob.get(f"/api/approvals/{outcomes['content_not_a_list id']}")).json()
                completed = (await bob.get(f"/api/approvals/{outcomes['well_formed id']}")).json()

    problem = (
        "upstream 'odd' answered with a malformed result (content must be an array, got string), which "
        "the broker did not pass on; the call may have run upstream"
    )
    assert failed["status"] == ApprovalStatus.FAILED.value
    assert [entry["event"] for entry in failed["audit"]][:4] == [
        "requested",
        "approved",
        "released",
        "failed",
    ]
    assert failed["audit"][3]["details"] == {"error": problem}
    held = outcomes["content_not_a_list"]
    assert held.is_error
    assert text_of(held) == f"The approved call could not be completed: {problem}"

    assert completed["status"] == ApprovalStatus.COMPLETED.value
    assert not outcomes["well_formed"].is_error and text_of(outcomes["well_formed"]) == "fine"
