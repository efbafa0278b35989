"""The README's OAuth section: its configuration and policy examples load as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from broker.config.errors import ConfigError
from broker.config.oauth import OAuthEntry, oauth_settings
from broker.config.settings import load_settings
from broker.policy import load_policy
from tests.e2e.harness import REPO


def section_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Agents sign in with OAuth", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)


def test_the_oauth_section_and_its_rules_load() -> None:
    config, *rule_blocks = section_blocks()
    settings = oauth_settings(OAuthEntry.model_validate(yaml.safe_load(config)["oauth"]))
    assert settings is not None and settings.agent_claim == "client_id"
    assert (
        settings.resource_metadata_url
        == "https://broker.example.com/.well-known/oauth-protected-resource/mcp"
    )
    assert len(rule_blocks) == 2  # the rule on claims, and the held call that keeps them
    for rules in rule_blocks:
        policy = load_policy('version: "1"\ndefault: deny\n' + rules)
        assert len(policy.rules) == 1


@pytest.mark.parametrize("algorithms", [["none"], ["HS256"], ["RS256", "HS512"], []])
def test_symmetric_and_none_algorithms_are_refused_at_load(algorithms: list[str]) -> None:
    with pytest.raises(ValidationError, match="not allowed"):
        OAuthEntry(issuer="https://id.example", resource="https://b.example/mcp", algorithms=algorithms)


def test_broker_yaml_with_the_section_loads(tmp_path: Path) -> None:
    config = section_blocks()[0]
    (tmp_path / "servers.json").write_text('{"mcpServers": {}}')
    (tmp_path / "policy.yaml").write_text('version: "1"\ndefault: deny\n')
    (tmp_path / "broker.yaml").write_text("servers: servers.json\npolicy: policy.yaml\n" + config)
    settings = load_settings(tmp_path / "broker.yaml", environ={})
    assert settings.oauth is not None
    assert settings.oauth.issuer == "https://login.example.com/realms/agents"
    assert settings.oauth.required_scopes == ("mcp:tools",)


def test_introspection_needs_its_secret_in_the_environment(tmp_path: Path) -> None:
    config = section_blocks()[0]
    config += (
        "  introspection: {endpoint: 'https://login.example.com/introspect', client_id: broker,"
        " client_secret_env: BROKER_INTROSPECTION_SECRET}\n"
    )
    (tmp_path / "servers.json").write_text('{"mcpServers": {}}')
    (tmp_path / "policy.yaml").write_text('version: "1"\ndefault: deny\n')
    (tmp_path / "broker.yaml").write_text("servers: servers.json\npolicy: policy.yaml\n" + config)
    with pytest.raises(ConfigError, match="BROKER_INTROSPECTION_SECRET is not set"):
        load_settings(tmp_path / "broker.yaml", environ={})
    settings = load_settings(tmp_path / "broker.yaml", environ={"BROKER_INTROSPECTION_SECRET": "s3cret"})
    assert settings.oauth is not None and settings.oauth.introspection is not None
    assert settings.oauth.introspection.client_secret == "s3cret"
