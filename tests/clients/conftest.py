"""The client matrix: real agent clients, a real broker, the demo exchange, decisions over the API.

Each client is driven through the API its agent framework calls (no model). What a test asserts is
what the model would be shown: the text of the tool output for a pending, approved, denied or
expired call. Clients pinned to other `mcp` versions run from their own virtualenvs as subprocesses
(see venvs.py); one that cannot be installed fails its tests, it never skips them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from broker.approvals import Approval
from broker.config.settings import BrokerSettings
from tests.clients import venvs
from tests.e2e.harness import RunningBroker, exchange_server, make_settings
from tests.e2e.test_approvals_flow import ApprovalFeed, watch

SCRIPTS = Path(__file__).resolve().parent / "scripts"

# Short rule timeouts keep the matrix fast; get_balances expires before anyone can decide.
POLICY = """
version: "1"
default: deny
rules:
  - tool: place_order
    action: allow
  - tool: place_order
    when: {"args.quantity": {"gt": 5}}
    action: require_approval
    timeout: 30
  - tool: get_balances
    action: require_approval
    timeout: 1
"""
APPROVED_ORDER = {"symbol": "BTCUSD", "side": "buy", "quantity": 10, "price": 90000}
DENIED_ORDER = {"symbol": "ETHUSD", "side": "sell", "quantity": 7, "price": 3400}
DENIAL_REASON = "not today: the desk is closed"
PENDING_MARK = "PENDING HUMAN APPROVAL"


def settings_for(tmp_path: Path, *, hold_budget: float, progress_interval: float = 0.2) -> BrokerSettings:
    settings = make_settings(tmp_path, POLICY, exchange_server())
    approvals = replace(settings.approvals, hold_budget=hold_budget, progress_interval=progress_interval)
    return replace(settings, approvals=approvals)


@pytest.fixture(scope="session")
def openai_agents_python() -> Path:
    return _venv_python("openai-agents")


@pytest.fixture(scope="session")
def langchain_python() -> Path:
    return _venv_python("langchain")


def _venv_python(client: str) -> Path:
    try:
        return venvs.ensure(client)
    except venvs.VenvError as exc:
        pytest.fail(f"the {client} client cannot be installed here, so it is not tested: {exc}")


async def run_script(python: Path, script: str, scenario: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs one scenario in a client script from another virtualenv; returns its per-step JSON lines."""
    finished = await anyio.run_process(
        [str(python), str(SCRIPTS / script), json.dumps(scenario)], check=False
    )
    stderr = finished.stderr.decode(errors="replace")
    if finished.returncode != 0:
        pytest.fail(f"{script} exited with {finished.returncode}:\n{stderr}")
    return [json.loads(line) for line in finished.stdout.decode().splitlines()]


class Desk:
    """The human side: sees approvals open and decides them over the decisions API."""

    def __init__(self, running: RunningBroker) -> None:
        self.running = running
        self.feed: ApprovalFeed = watch(running)

    async def next_opened(self) -> Approval:
        return await self.feed.opened.receive()

    async def approve(self, approval_id: str) -> None:
        async with self.running.approver("alice") as alice:
            response = await alice.post(f"/api/approvals/{approval_id}/approve")
        assert response.status_code == 200, response.text

    async def deny(self, approval_id: str, reason: str = DENIAL_REASON) -> None:
        async with self.running.approver("alice") as alice:
            response = await alice.post(f"/api/approvals/{approval_id}/deny", json={"reason": reason})
        assert response.status_code == 200, response.text

    async def status(self, approval_id: str) -> str:
        approval = await self.running.broker.approvals.store.get(approval_id)
        assert approval is not None
        return approval.status.value


async def after_client_timeout(approval: Approval, client_timeout: float) -> None:
    """Sleeps until the client's own timeout, counted from when the call was held, has passed.

    Real time on purpose: what is shown is that the client's timeout no longer decides the outcome.
    """
    await anyio.sleep(max(0.0, client_timeout + 0.2 - approval_age(approval)))


def approval_age(approval: Approval) -> float:
    from datetime import UTC, datetime

    return (datetime.now(UTC) - approval.created_at).total_seconds()


def assert_pending(seen: str, approval: Approval) -> None:
    assert PENDING_MARK in seen, seen
    assert approval.id in seen, seen


def assert_approved(seen: str) -> None:
    # The broker may put a note before the upstream's own text (an identical call attached to the
    # approval, say); the upstream's JSON is what must reach the model intact.
    try:
        placed = json.loads(seen[seen.index("{") : seen.rindex("}") + 1])
    except ValueError:
        raise AssertionError(f"not the upstream's JSON result: {seen!r}") from None
    assert placed["quantity"] == APPROVED_ORDER["quantity"] and placed["order_id"].startswith("ord-"), seen


def assert_denied(seen: str) -> None:
    assert "Denied by a human" in seen and DENIAL_REASON in seen, seen


def assert_expired(seen: str) -> None:
    assert "Expired: nobody approved" in seen and "not denied by a human" in seen, seen


def by_arguments(approvals: Sequence[Approval], arguments: dict[str, Any]) -> Approval:
    [found] = [approval for approval in approvals if approval.arguments == arguments]
    return found


async def settle(desk: Desk, approval: Approval) -> None:
    """Waits until a decided approval has its outcome (an approved call released and answered)."""
    settled = await desk.running.broker.approvals.wait(approval.id, 20)
    assert settled.is_terminal, settled
