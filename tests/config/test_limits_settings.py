"""The `limits:` section: defaults when it is absent, and bad values refused with where they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config.errors import ConfigError
from broker.config.settings import LimitSettings, load_settings
from tests.config.test_agents_and_approvers import write_config


def test_defaults_apply_when_the_section_is_absent_or_partial(tmp_path: Path) -> None:
    assert load_settings(write_config(tmp_path, ""), environ={}).limits == LimitSettings(
        header_timeout=10.0, body_timeout=30.0, max_connections_per_address=256
    )
    partial = write_config(tmp_path, "limits: {body_timeout: 120}\n")
    assert load_settings(partial, environ={}).limits == LimitSettings(body_timeout=120.0)
    whole = write_config(
        tmp_path, "limits: {header_timeout: 2.5, body_timeout: 60, max_connections_per_address: 1000}\n"
    )
    assert load_settings(whole, environ={}).limits == LimitSettings(2.5, 60.0, 1000)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{header_timeout: 0}", r"limits\.header_timeout: Input should be greater than 0"),
        ("{body_timeout: -1}", r"limits\.body_timeout: Input should be greater than 0"),
        ("{body_timeout: .inf}", r"limits\.body_timeout: Input should be a finite number"),
        ("{header_timeout: 7200}", r"limits\.header_timeout: Input should be less than or equal to 3600"),
        (
            "{max_connections_per_address: 0}",
            r"limits\.max_connections_per_address: .*greater than or equal to 1",
        ),
        ("{max_connections_per_address: many}", r"limits\.max_connections_per_address: .*valid integer"),
        (
            "{header_timout: 5}",
            r"limits\.header_timout: unknown key 'header_timout'; did you mean 'header_timeout'\?",
        ),
        ("[10, 30]", r"limits: Input should be a valid dictionary"),
    ],
)
def test_bad_values_are_refused_with_their_place(tmp_path: Path, section: str, message: str) -> None:
    path = write_config(tmp_path, f"limits: {section}\n")
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/broker\.yaml:\d+:\d+: {message}"):
        load_settings(path, environ={})
