"""The container files follow the deployment conventions (the images cannot be built here).

docker/Dockerfile runs the broker as a non-root user with a health check and no secrets in
the image; docker/compose.yaml runs several replicas on one PostgreSQL database behind the
proxy in docker/nginx.conf, and stops them slowly enough for the drain to finish.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.cli.serve import SHUTDOWN_MARGIN_SECONDS
from broker.config.settings import load_settings
from broker.policy import load_policy
from tests.replicas.cluster import REPO

DOCKER = REPO / "docker"
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
REFERENCE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::?[?-][^}]*)?\}")
URL_PASSWORD = re.compile(r"://[^:/@]+:(?P<password>[^@]+)@")


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = pending + line
        pending = ""
        keyword, _, arguments = logical.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return document


def broker_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("build", {}).get("dockerfile") == "docker/Dockerfile"
    }


def interpolate(value: str, environ: dict[str, str]) -> str:
    return REFERENCE.sub(lambda match: environ[match.group("name")], value)


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, f"unreadable duration {duration!r}"
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def test_the_image_copies_every_file_the_package_build_reads() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    copied = {
        source
        for keyword, arguments in dockerfile()
        if keyword == "COPY"
        for source in arguments.split()[:-1]
        if not source.startswith("--")
    }
    needed = {project["readme"], *project.get("license-files", []), "pyproject.toml", "broker", "migrations"}

    assert needed <= copied, f"pip install . in the image would miss {sorted(needed - copied)}"


def test_the_image_runs_the_broker_as_a_non_root_user() -> None:
    instructions = dockerfile()
    keywords = [keyword for keyword, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert any(keyword == "RUN" and "pip install ." in arguments for keyword, arguments in instructions)
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("CMD")
    cmd = next(arguments for keyword, arguments in instructions if keyword == "CMD")
    assert json.loads(cmd) == ["broker", "serve", "--config", "/etc/broker/broker.yaml"]


def test_the_image_checks_health_on_the_port_it_exposes() -> None:
    instructions = dict(dockerfile())
    settings = yaml.safe_load((DOCKER / "broker.yaml").read_text())
    port = settings["listen"]["port"]
    assert instructions["EXPOSE"] == str(port)
    assert settings["listen"]["host"] == "0.0.0.0"
    assert f"127.0.0.1:{port}/healthz" in instructions["HEALTHCHECK"]
    assert instructions["HEALTHCHECK"].split()[-1].endswith("]"), "exec form, no shell needed"


def test_no_secret_is_baked_into_the_image_or_written_into_the_files() -> None:
    for keyword, arguments in dockerfile():
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not SECRET_NAME.search(arguments), f"{keyword} {arguments}"
    for name, service in compose()["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(variable):
                assert REFERENCE.fullmatch(str(value)), f"{name}: {variable} must come from the environment"
            credentials = URL_PASSWORD.search(str(value))
            if credentials:
                assert REFERENCE.fullmatch(credentials.group("password")), (
                    f"{name}: {variable} holds a password"
                )
    config = yaml.safe_load((DOCKER / "broker.yaml").read_text())
    for section in ("agents", "approvers"):
        for entry in config.get(section, {}).values():
            assert "api_key" not in entry and "token" not in entry, f"{section}: use *_env, not a literal"
    ignored = [
        line for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines() if line[:1] not in "#"
    ]
    assert ignored[0] == "*", "the build context holds only what the image needs (no .env, no .venv)"


def test_every_replica_shares_one_postgresql_database() -> None:
    services = compose()["services"]
    brokers = broker_services()
    assert len(brokers) >= 2
    environ = {
        "POSTGRES_PASSWORD": "pw",
        "TRADING_BOT_KEY": "k",
        "ALICE_TOKEN": "t",
        "BROKER_WEB_SESSION_SECRET": "s",
    }
    urls = {
        name: interpolate(service["environment"]["BROKER_DATABASE_URL"], environ)
        for name, service in brokers.items()
    }
    assert len(set(urls.values())) == 1, urls
    [url] = set(urls.values())
    assert url.startswith("postgresql://") and "@postgres:5432/" in url
    assert "postgres" in services
    for service in brokers.values():
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "/etc/broker/broker.yaml" in " ".join(service["volumes"])


def test_the_proxy_balances_over_every_replica() -> None:
    nginx = (DOCKER / "nginx.conf").read_text()
    upstream = re.search(r"upstream\s+brokers\s*\{(?P<body>.*?)\}", nginx, re.DOTALL)
    assert upstream, "nginx.conf names an upstream 'brokers'"
    servers = set(re.findall(r"^\s*server\s+([\w.-]+):(\d+)", upstream.group("body"), re.MULTILINE))
    port = str(yaml.safe_load((DOCKER / "broker.yaml").read_text())["listen"]["port"])
    assert servers == {(name, port) for name in broker_services()}
    assert "proxy_pass http://brokers;" in nginx
    assert (
        re.search(r"proxy_read_timeout\s+(\d+)s", nginx)
        and int(
            re.search(r"proxy_read_timeout\s+(\d+)s", nginx).group(1)  # type: ignore[union-attr]
        )
        >= 60
    ), "held calls wait longer than nginx's 60 s default"
    assert "proxy_buffering off;" in nginx, "progress notifications (SSE) must not be buffered"
    proxies = [
        service for service in compose()["services"].values() if "nginx" in str(service.get("image", ""))
    ]
    assert len(proxies) == 1 and "./nginx.conf:/etc/nginx/conf.d/default.conf:ro" in proxies[0]["volumes"]


def test_replicas_get_longer_to_stop_than_their_drain_takes() -> None:
    grace = yaml.safe_load((DOCKER / "broker.yaml").read_text())["shutdown_grace_seconds"]
    for name, service in broker_services().items():
        assert seconds(service["stop_grace_period"]) > grace + SHUTDOWN_MARGIN_SECONDS, name


def test_the_mounted_configuration_and_policy_load(tmp_path: Path) -> None:
    environ = {
        "BROKER_DATABASE_URL": "postgresql://broker:pw@postgres:5432/broker",
        "TRADING_BOT_KEY": "k" * 32,
        "ALICE_TOKEN": "t" * 32,
        "BROKER_WEB_SESSION_SECRET": "s" * 32,
    }
    settings = load_settings(DOCKER / "broker.yaml", environ=environ)
    assert settings.database_url == environ["BROKER_DATABASE_URL"]
    assert settings.rate_limits.backend is None  # database, because the database is PostgreSQL
    assert settings.policy_path == DOCKER / "policy.yaml"
    policy = load_policy(settings.policy_path.read_text(), source=str(settings.policy_path))
    assert policy.decide("withdraw").action.value == "deny"


@pytest.mark.parametrize("missing", ["TRADING_BOT_KEY", "ALICE_TOKEN"])
def test_the_configuration_refuses_to_start_without_its_secrets(missing: str) -> None:
    from broker.config.errors import ConfigError

    environ = {"TRADING_BOT_KEY": "k", "ALICE_TOKEN": "t", "BROKER_WEB_SESSION_SECRET": "s" * 32}
    del environ[missing]
    with pytest.raises(ConfigError, match=missing):
        load_settings(DOCKER / "broker.yaml", environ=environ)
