"""Configuration errors say file:line:col, the key path, and the nearest known key."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config.errors import ConfigError
from broker.config.settings import load_settings


def test_unknown_keys_and_bad_values_point_at_the_line_with_a_suggestion(tmp_path: Path) -> None:
    config = tmp_path / "broker.yaml"
    config.write_text(
        "servers: {mcpServers: {}}\npolicy: p.yaml\nlisten:\n  host: 127.0.0.1\n  prot: 9000\n"
        "agents:\n  bot: {api_key: x, hold_budgte: 3}\napprovals: {hold_budget: -1}\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={})
    assert str(raised.value).splitlines() == [
        f"{config}:5:3: listen.prot: unknown key 'prot'; did you mean 'port'?",
        f"{config}:7:21: agents.bot.hold_budgte: unknown key 'hold_budgte'; did you mean 'hold_budget'?",
        f"{config}:8:26: approvals.hold_budget: Input should be greater than 0",
    ]


def test_json_configurations_get_positions_too(tmp_path: Path) -> None:
    config = tmp_path / "broker.json"
    config.write_text(
        '{"servers": {"mcpServers": {}},\n "policy": "p.yaml",\n "databse_url": "sqlite:///x.db"}'
    )
    with pytest.raises(
        ConfigError, match=r":3:2: databse_url: unknown key 'databse_url'; did you mean 'database_url'\?"
    ):
        load_settings(config, environ={})
