"""The web inbox's "approve with edits" form: one typed input per editable argument, CSRF as the
other forms, a refused edit explained, and the agent getting the result of the edited call."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.e2e.harness import exchange_server, make_settings, running_broker
from tests.e2e.test_approvals_flow import BIG_ORDER, watch
from tests.e2e.test_edits_flow import EDIT_POLICY
from tests.web.support import accounts_with_passwords, csrf_token, http_signed_in

pytestmark = pytest.mark.anyio


async def test_an_approver_edits_in_the_inbox_and_the_agent_gets_the_edited_call(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, EDIT_POLICY, exchange_server(), approvers=accounts_with_passwords())
    async with running_broker(settings) as running:
        opened = watch(running)
        with anyio.fail_after(60):
            async with running.client() as client, anyio.create_task_group() as tasks:
                outcome: dict[str, Any] = {}

                async def agent() -> None:
                    outcome["result"] = await client.call_tool("place_order", BIG_ORDER)

                tasks.start_soon(agent)
                approval = await opened.opened.receive()
                async with http_signed_in(running, "alice") as http:
                    page = (await http.get(f"/approvals/{approval.id}")).text
                    assert "Approve with edits" in page
                    assert re.search(r'name="edit.quantity" type="number" step="any" value="10"', page)
                    assert re.search(r'name="edit.price" type="number" step="any" value="90000"', page)
                    assert 'name="edit.symbol"' not in page
                    form = {
                        "csrf_token": csrf_token(page),
                        "seen_hash": approval.arguments_hash,
                        "edit.quantity": "1",
                        "edit.price": "90000",
                    }
                    refused = await http.post(f"/approvals/{approval.id}/approve", data=form)
                    assert refused.status_code == 400
                    assert "the edited call would be decided by rule small-orders (allow)" in refused.text
                    forged = await http.post(
                        f"/approvals/{approval.id}/approve",
                        data={**form, "csrf_token": "x", "edit.quantity": "6"},
                    )
                    assert forged.status_code == 403
                    done = await http.post(
                        f"/approvals/{approval.id}/approve", data={**form, "edit.quantity": "6"}
                    )
                    assert done.status_code == 303, done.text
                    shown = (await http.get(f"/approvals/{approval.id}")).text
                    assert "edited" in shown
            result = outcome["result"]
            assert result.content[0].text.startswith(
                "A human (alice) changed the arguments before approving: quantity 10 -> 6."
            )
            assert result.structured_content["quantity"] == 6 and isinstance(
                result.structured_content["price"], int | float
            )


QUORUM_EDIT_POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    action: require_approval
    quorum: 2
    approvers: ["@trading-leads"]
    editable: [quantity]
"""


async def test_a_plain_approve_from_a_page_shown_before_an_edit_is_refused(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, QUORUM_EDIT_POLICY, exchange_server(), approvers=accounts_with_passwords()
    )
    async with running_broker(settings) as running:
        opened = watch(running)
        with anyio.fail_after(60):
            async with running.client() as client, anyio.create_task_group() as tasks:
                tasks.start_soon(client.call_tool, "place_order", BIG_ORDER)
                approval = await opened.opened.receive()
                async with http_signed_in(running, "alice") as alice:
                    stale = (await alice.get(f"/approvals/{approval.id}")).text
                    decide_form = re.search(r"<form[^>]*data-decide>.*?</form>", stale, re.S)
                    assert decide_form is not None
                    assert f'name="seen_hash" value="{approval.arguments_hash}"' in decide_form.group(0)
                    async with running.approver("bob") as bob:
                        edited = await bob.post(
                            f"/api/approvals/{approval.id}/approve", json={"edits": {"quantity": 6}}
                        )
                        assert edited.status_code == 200, edited.text
                    form = {"csrf_token": csrf_token(stale), "seen_hash": approval.arguments_hash}
                    refused = await alice.post(f"/approvals/{approval.id}/approve", data=form)
                    assert refused.status_code == 409 and "Arguments changed" in refused.text
                stored = await running.broker.approvals.store.get(approval.id)
                assert stored is not None and stored.status.value == "pending"
                tasks.cancel_scope.cancel()
