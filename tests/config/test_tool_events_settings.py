"""The `tool_events:` section: 90 days by default, 0 or null keeps events forever, and bad values
refused with where they are."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from broker.config.errors import ConfigError
from broker.config.settings import load_settings
from broker.config.tool_events import ToolEventSettings
from tests.config.test_agents_and_approvers import write_config


@pytest.mark.parametrize(
    ("section", "retention"),
    [
        ("", timedelta(days=90)),
        ("tool_events: {}\n", timedelta(days=90)),
        ("tool_events: {retention_days: 7}\n", timedelta(days=7)),
        ("tool_events: {retention_days: 0}\n", None),
        ("tool_events: {retention_days: null}\n", None),
    ],
)
def test_retention_defaults_to_90_days_and_0_or_null_keeps_forever(
    tmp_path: Path, section: str, retention: timedelta | None
) -> None:
    settings = load_settings(write_config(tmp_path, section), environ={})
    assert settings.tool_events == ToolEventSettings(retention=retention)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{retention_days: -1}", r"tool_events\.retention_days: Input should be greater than or equal to 0"),
        (
            "{retention_days: 36501}",
            r"tool_events\.retention_days: Input should be less than or equal to 36500",
        ),
        ("{retention_days: 1.5}", r"tool_events\.retention_days: Input should be a valid integer"),
        ("{retention_days: yes}", r"tool_events\.retention_days: Input should be a valid integer"),
        ('{retention_days: "90"}', r"tool_events\.retention_days: Input should be a valid integer"),
        (
            "{retention: 30}",
            r"tool_events\.retention: unknown key 'retention'; did you mean 'retention_days'\?",
        ),
        ("90", r"tool_events: Input should be a valid dictionary"),
    ],
)
def test_bad_values_are_refused_with_their_place(tmp_path: Path, section: str, message: str) -> None:
    path = write_config(tmp_path, f"limits: {{}}\ntool_events: {section}\n")
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/broker\.yaml:4:\d+: {message}"):
        load_settings(path, environ={})
