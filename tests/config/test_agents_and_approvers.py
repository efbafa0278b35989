"""Configuration rules that keep agents from deciding on their own calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config.errors import ConfigError
from broker.config.settings import load_settings


def write_config(tmp_path: Path, body: str) -> Path:
    (tmp_path / "policy.yaml").write_text('version: "1"\ndefault: deny\n')
    path = tmp_path / "broker.yaml"
    path.write_text("servers: {mcpServers: {}}\npolicy: policy.yaml\n" + body)
    return path


def test_an_approver_token_that_is_an_agent_key_is_refused(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "agents: {trader: {api_key: key-trader}}\napprovers: {bob: {token_env: BOB_TOKEN}}\n",
    )
    with pytest.raises(ConfigError, match=r"approvers\.bob: its token is the API key of agent trader"):
        load_settings(path, environ={"BOB_TOKEN": "key-trader"})

    assert load_settings(path, environ={"BOB_TOKEN": "another-key"}).approvers[0].name == "bob"


def test_acts_for_names_approvers(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "agents: {trader: {api_key: k, acts_for: [alice]}}\napprovers: {alice: {token: t}, bob: {token: u}}\n",
    )
    assert load_settings(path, environ={}).acts_for == {"trader": frozenset({"alice"})}

    path = write_config(tmp_path, "agents: {trader: {api_key: k, acts_for: [mallory]}}\napprovers: {}\n")
    with pytest.raises(ConfigError, match=r"agents.trader.acts_for: mallory is not in approvers"):
        load_settings(path, environ={})


def test_an_agent_names_how_its_client_waits(tmp_path: Path) -> None:
    from broker.proxy.waiting import ClientWaits

    path = write_config(
        tmp_path,
        "agents:\n  quick: {api_key: k1, hold_budget: 3}\n  ts: {api_key: k2, progress_resets_timeout: false}\n"
        "  plain: {api_key: k3}\n",
    )
    settings = load_settings(path, environ={})
    assert settings.client_waits == {
        "quick": ClientWaits(hold_budget=3),
        "ts": ClientWaits(progress_resets_timeout=False),
    }
    assert settings.approvals.hold_budget == 4  # under the OpenAI Agents SDK's 5 s

    path = write_config(tmp_path, "agents: {quick: {api_key: k1, hold_budget: 0}}\n")
    with pytest.raises(ConfigError, match=r"agents\.quick\.hold_budget"):
        load_settings(path, environ={})
