"""The `approvals:` section: session_end_grace reaches the settings, bad values are refused with their place."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config.errors import ConfigError
from broker.config.settings import load_settings
from broker.proxy.waiting import DEFAULT_END_GRACE
from tests.config.test_agents_and_approvers import write_config


def test_session_end_grace_defaults_and_is_read(tmp_path: Path) -> None:
    assert (
        load_settings(write_config(tmp_path, ""), environ={}).approvals.session_end_grace == DEFAULT_END_GRACE
    )
    path = write_config(tmp_path, "approvals: {session_end_grace: 7.5}\n")
    assert load_settings(path, environ={}).approvals.session_end_grace == 7.5


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", r"greater than 0"),
        ("-1", r"greater than 0"),
        ("31", r"less than or equal to 30"),
        (".inf", r"finite number"),
        (".nan", r"finite number"),
        ("soon", r"valid number"),
    ],
)
def test_bad_session_end_grace_is_refused_with_its_place(tmp_path: Path, value: str, message: str) -> None:
    path = write_config(tmp_path, f"approvals:\n  session_end_grace: {value}\n")
    with pytest.raises(
        ConfigError, match=rf"^{tmp_path}/broker\.yaml:4:22: approvals\.session_end_grace: .*{message}"
    ):
        load_settings(path, environ={})
