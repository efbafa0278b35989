"""The ``web.sso`` section: the README's worked example loads, and mistakes are reported where they are."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker.config.errors import ConfigError
from broker.config.settings import load_settings
from tests.config.test_agents_and_approvers import write_config

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("### Approvers sign in with single sign-on", 1)[1]
    found = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert found is not None
    return found.group(1)


def test_the_readme_example_loads(tmp_path: Path) -> None:
    environ = {"BROKER_WEB_SECRET": "s" * 32, "BROKER_SSO_CLIENT_SECRET": "client-secret"}
    settings = load_settings(write_config(tmp_path, readme_example()), environ=environ)
    sso = settings.web.sso
    assert sso is not None
    assert (sso.issuer, sso.client_id, sso.client_secret) == (
        "https://keycloak.example.com/realms/acme",
        "mcp-broker-inbox",
        "client-secret",
    )
    assert (sso.match, sso.groups_claim, dict(sso.groups)) == (
        "email",
        "groups",
        {"trading-leads": "Trading Leads"},
    )
    assert sso.api_audience == "mcp-broker-api" and "openid" in sso.scopes
    # Introspection authenticates as the inbox client unless told otherwise.
    assert sso.introspection is not None
    assert (
        sso.introspection.client_id,
        sso.introspection.client_secret,
        sso.introspection.cache_seconds,
    ) == (
        "mcp-broker-inbox",
        "client-secret",
        30.0,
    )
    assert sso.introspection.endpoint.endswith("/realms/acme/protocol/openid-connect/token/introspect")
    by_name = {account.name: account for account in settings.approvers}
    assert by_name["alice"].email == "alice@example.com"
    assert by_name["bob"].oidc_sub == "1f0c7c0e-3c1a-4a3e-9d6b-2f5d0a7c9e11"
    # The agent side (broker serve --stdio) needs no secret and runs no inbox.
    assert (
        load_settings(write_config(tmp_path, readme_example()), environ={}, agent_side=True).web.sso is None
    )


@pytest.mark.parametrize(
    ("sso", "message"),
    [
        (
            "{issuer: https://idp, client_id: c, algorithms: [HS256]}",
            r"web\.sso\.algorithms.*HS256 not allowed",
        ),
        ("{issuer: https://idp, client_id: c, algorithms: [none]}", r"none not allowed"),
        ("{issuer: https://idp, client_id: c, scopes: [email]}", r"scopes must include openid"),
        ("{issuer: idp.example.com, client_id: c}", r"web\.sso\.issuer"),
        ("{issuer: https://idp, client_id: c, client_secret_env: NOPE}", r"NOPE is not set"),
        ("{issuer: https://idp, client_id: c, match: name}", r"web\.sso\.match"),
        (
            "{issuer: https://idp, client_id: c, introspection: {endpoint: https://idp/introspect}}",
            r"introspection needs api_audience",
        ),
        (
            "{issuer: https://idp, client_id: c, api_audience: a, introspection: {endpoint: https://idp/i}}",
            r"web\.sso\.introspection: the endpoint needs a client secret",
        ),
        (
            "{issuer: https://idp, client_id: c, api_audience: a,"
            " introspection: {endpoint: https://idp/i, client_secret_env: NOPE}}",
            r"web\.sso\.introspection\.client_secret_env: environment variable NOPE is not set",
        ),
        (
            "{issuer: https://idp, client_id: c, api_audience: a, introspection: {endpoint: idp/i}}",
            r"web\.sso\.introspection\.endpoint",
        ),
        (
            "{issuer: https://idp, client_id: c, post_logout_redirect_uri: /login}",
            r"post_logout_redirect_uri",
        ),
    ],
)
def test_mistakes_are_reported_with_their_place(tmp_path: Path, sso: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write_config(tmp_path, f"web: {{sso: {sso}}}\n"), environ={})


def test_where_the_provider_sends_people_after_logout_is_configurable(tmp_path: Path) -> None:
    sso = "{issuer: https://idp, client_id: c, post_logout_redirect_uri: 'https://inbox.example/login'}"
    settings = load_settings(write_config(tmp_path, f"web: {{sso: {sso}}}\n"), environ={})
    assert settings.web.sso is not None
    assert settings.web.sso.post_logout_redirect_uri == "https://inbox.example/login"
    default = load_settings(
        write_config(tmp_path, "web: {sso: {issuer: https://idp, client_id: c}}\n"), environ={}
    )
    assert default.web.sso is not None and default.web.sso.post_logout_redirect_uri is None


def test_the_introspection_endpoint_may_be_left_to_discovery(tmp_path: Path) -> None:
    sso = "{issuer: https://idp, client_id: c, client_secret_env: SECRET, api_audience: a, introspection: {}}"
    settings = load_settings(write_config(tmp_path, f"web: {{sso: {sso}}}\n"), environ={"SECRET": "s"})
    assert settings.web.sso is not None and settings.web.sso.introspection is not None
    assert settings.web.sso.introspection.endpoint is None
    assert settings.web.sso.introspection.client_id == "c"
