"""The ``slack:`` block of the broker's configuration file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker.config.errors import ConfigError
from broker.config.settings import load_settings


def write_config(tmp_path: Path, slack: str) -> Path:
    (tmp_path / "policy.yaml").write_text('version: "1"\ndefault: deny\nrules: []\n')
    config = tmp_path / "broker.yaml"
    config.write_text(f"servers: {{mcpServers: {{}}}}\npolicy: policy.yaml\n{slack}")
    return config


def test_tokens_come_from_the_environment(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
slack:
  bot_token_env: SLACK_BOT_TOKEN
  signing_secret_env: SLACK_SIGNING_SECRET
  default_channel: "#approvals"
  user_groups: {risk-officers: S0RISK}
""",
    )
    environ = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "shh"}
    settings = load_settings(config, environ=environ)
    assert settings.slack is not None
    assert (settings.slack.bot_token, settings.slack.signing_secret) == ("xoxb-1", "shh")
    assert settings.slack.mode == "http" and settings.slack.default_channel == "#approvals"
    assert dict(settings.slack.user_groups) == {"risk-officers": "S0RISK"}
    assert load_settings(write_config(tmp_path, ""), environ={}).slack is None


def test_socket_mode_uses_the_app_level_token(tmp_path: Path) -> None:
    config = write_config(tmp_path, "slack: {mode: socket, bot_token_env: BOT, app_token_env: APP}\n")
    settings = load_settings(config, environ={"BOT": "xoxb-1", "APP": "xapp-1"})
    assert settings.slack is not None
    assert (settings.slack.mode, settings.slack.app_token, settings.slack.signing_secret) == (
        "socket",
        "xapp-1",
        None,
    )


@pytest.mark.parametrize(
    ("slack", "environ", "message"),
    [
        ("slack: {signing_secret: s}\n", {}, "slack: bot_token (or bot_token_env) is required"),
        ("slack: {bot_token_env: BOT, signing_secret: s}\n", {}, "environment variable BOT is not set"),
        ("slack: {bot_token: b}\n", {}, "signing_secret (or signing_secret_env) is required"),
        ("slack: {bot_token: b, mode: socket}\n", {}, "app_token (or app_token_env) is required"),
        ("slack: {bot_token: b, bot_token_env: BOT, signing_secret: s}\n", {"BOT": "x"}, "not both"),
        ("slack: {bot_token: b, signing_secret: s, mode: carrier-pigeon}\n", {}, "slack.mode"),
        (
            "slack: {bot_token: b, signing_secret: s, user_groups: {leads: '#leads'}}\n",
            {},
            "not a Slack user group id",
        ),
        ("slack: {bot_token: b, signing_secret: s, channel: '#x'}\n", {}, "slack.channel"),
    ],
)
def test_bad_slack_settings_say_what_is_wrong(
    tmp_path: Path, slack: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(write_config(tmp_path, slack), environ=environ)
