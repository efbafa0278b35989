"""examples/agents runs as written: the broker.yaml loads, and each client snippet shows the pending
answer and, run again after the approval, the order's result."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from broker.config.settings import load_settings
from tests.clients.conftest import APPROVED_ORDER, PENDING_MARK, Desk, assert_approved, settings_for
from tests.e2e.harness import REPO, running_broker
from tests.e2e.test_node_peers import NODE_DIR, node

pytestmark = pytest.mark.anyio

EXAMPLES = REPO / "examples/agents"


def test_the_example_configuration_loads_with_a_budget_per_client(tmp_path: Path) -> None:
    keys = {
        name: f"key-{name.lower()}-0001"
        for name in ("OPENAI_BOT_KEY", "LANGCHAIN_BOT_KEY", "TS_BOT_KEY", "TS_PROGRESS_BOT_KEY")
    }
    settings = load_settings(EXAMPLES / "broker.yaml", environ=keys)
    assert settings.approvals.hold_budget == 4
    waits = settings.client_waits
    assert waits["openai-bot"].hold_budget == 4
    assert waits["ts-progress-bot"].progress_resets_timeout is False


async def run_example(command: list[str], url: str) -> str:
    environ = {**os.environ, "BROKER_URL": url}
    finished = await anyio.run_process(command, check=False, env=environ)
    if finished.returncode != 0:
        pytest.fail(
            f"{command[-1]} exited with {finished.returncode}:\n{finished.stderr.decode(errors='replace')}"
        )
    return finished.stdout.decode()


@pytest.mark.parametrize("client", ["openai_agents", "langchain"])
async def test_a_python_snippet_shows_pending_then_the_result(
    tmp_path: Path, client: str, request: pytest.FixtureRequest
) -> None:
    python: Path = request.getfixturevalue(f"{client}_python")
    script = str(EXAMPLES / f"{client}_demo.py")
    settings = settings_for(tmp_path, hold_budget=1)
    async with running_broker(replace(settings, allow_anonymous=True)) as running:
        desk = Desk(running)
        with anyio.fail_after(60):
            pending = await run_example([str(python), script], f"{running.url}/mcp")
            held = await desk.next_opened()
            await desk.approve(held.id)
            await running.broker.approvals.wait(held.id, 20)
            result = await run_example([str(python), script], f"{running.url}/mcp")
    assert PENDING_MARK in pending and held.id in pending, pending
    assert held.arguments == APPROVED_ORDER
    assert_approved(result)


@pytest.mark.node
async def test_the_typescript_snippet_waits_with_progress_until_approved(tmp_path: Path) -> None:
    # The snippet resolves the SDK next to itself: give its copy the test peers' node_modules.
    shutil.copy(EXAMPLES / "typescript_demo.mjs", tmp_path / "demo.mjs")
    (tmp_path / "node_modules").symlink_to(NODE_DIR / "node_modules")
    settings = settings_for(tmp_path, hold_budget=1)
    async with running_broker(replace(settings, allow_anonymous=True)) as running:
        desk = Desk(running)
        output: list[str] = []

        async def agent() -> None:
            output.append(await run_example([node(), str(tmp_path / "demo.mjs")], f"{running.url}/mcp"))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(agent)
                held = await desk.next_opened()
                await anyio.sleep(2)  # past the hold budget: progress keeps the call open
                await desk.approve(held.id)
    assert_approved(output[0])
    assert json.loads(output[0])["symbol"] == APPROVED_ORDER["symbol"]
