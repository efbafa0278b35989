"""`broker policy convert|check|explain` on PolicyLayer policies, and the converted policy deciding
every call exactly as the original does."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.policy.loader import load_policy
from tests.e2e.harness import REPO
from tests.e2e.test_cli import broker

DATA = Path(__file__).parent / "data"
EXAMPLES = sorted(
    path.name for path in DATA.glob("*.*") if "invalid" not in path.name and path.suffix != ".md"
)

TOOLS = (
    "create_charge",
    "create_refund",
    "create_issue",
    "delete_customer",
    "read_file",
    "list_customers",
    "delete_account",
    "get_crypto_prices",
    "transfer_repository",
    "unlisted_tool",
)
ARGUMENTS: tuple[dict[str, Any], ...] = (
    {},
    {"amount": 100, "currency": "usd"},
    {"amount": 50001, "currency": "eur"},
    {"amount": 100, "currency": "gbp"},
    {"amount": "100", "currency": "usd"},
    {"amount": 20000, "reason": "duplicate"},
    {"currency": ["usd"]},
)


def signature(decision: Any) -> tuple[Any, ...]:
    limits = tuple(
        (limit.counter, limit.bound, limit.inclusive, limit.window_seconds, limit.align, limit.per)
        for limit in decision.limits
    )
    return decision.action, decision.rule, decision.reason, limits


@pytest.mark.parametrize("name", EXAMPLES)
def test_converted_policy_decides_every_call_as_the_original(name: str, tmp_path: Path) -> None:
    out = tmp_path / "native.yaml"
    result = broker("policy", "convert", str(DATA / name), "-o", str(out))
    assert result.returncode == 0, result.stderr
    original = load_policy((DATA / name).read_bytes(), source=name)
    converted = load_policy(out.read_bytes(), source=str(out))
    for tool, arguments in itertools.product(TOOLS, ARGUMENTS):
        assert signature(converted.decide(tool, arguments=arguments)) == signature(
            original.decide(tool, arguments=arguments)
        ), (tool, arguments)
        assert converted.is_listed(tool) == original.is_listed(tool)


def test_convert_writes_commented_native_yaml_to_stdout() -> None:
    result = broker("policy", "convert", str(DATA / "intercept_policy_md_github.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# Converted from PolicyLayer Intercept YAML")
    assert "# from " in result.stdout and "rules:" in result.stdout
    assert "tools:" not in result.stdout


def test_convert_refuses_an_invalid_policy_with_positions(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('version: "1"\ntools:\n  t:\n    rules:\n      - name: r\n        rate_limit: 5/week\n')
    result = broker("policy", "convert", str(bad))
    assert result.returncode == 2
    assert f"{bad}:6:21: rate_limit window must be" in result.stderr
    assert result.stdout == ""


def test_check_and_explain_read_policylayer_documents() -> None:
    hosted, intercept = DATA / "hosted_issue_crypto.json", DATA / "intercept_testdata_valid_policy.yaml"
    check = broker("policy", "check", str(hosted), str(intercept))
    assert check.returncode == 0, check.stderr
    ok_lines = [line for line in check.stdout.splitlines() if ": ok (" in line]
    assert ok_lines[0].startswith(f"{hosted}: ok (") and ok_lines[0].endswith(
        "; PolicyLayer hosted JSON format)"
    )
    assert ok_lines[1].startswith(f"{intercept}: ok (")
    assert ok_lines[1].endswith("; PolicyLayer Intercept YAML format)")
    call = ("create_charge", "--args", json.dumps({"amount": 60000, "currency": "usd"}))
    stripe = str(DATA / "intercept_testdata_valid_policy.yaml")
    explain = broker("policy", "explain", stripe, *call, "--json")
    assert explain.returncode == 0, explain.stderr
    decision = json.loads(explain.stdout)
    assert decision["action"] == "deny" and decision["reason"] == "Single charge cannot exceed $500.00"
    assert decision["format"] == "intercept"
    text = broker("policy", "explain", stripe, *call).stdout
    assert text.startswith(f"policy:    {stripe} (PolicyLayer Intercept YAML format)\n")
    assert "unless args.amount lte 50000: does not hold" in text


def test_diff_of_a_policy_and_its_conversion_finds_no_change(tmp_path: Path) -> None:
    server = REPO / "tests/upstream/servers/policylayer_server.py"
    servers = tmp_path / "servers.json"
    servers.write_text(
        json.dumps({"mcpServers": {"examples": {"command": sys.executable, "args": [str(server)]}}})
    )
    original = DATA / "intercept_policy_md_stripe.yaml"
    converted = tmp_path / "native.yaml"
    assert broker("policy", "convert", str(original), "-o", str(converted)).returncode == 0
    same = broker("policy", "diff", str(original), str(converted), "--servers", str(servers))
    assert same.returncode == 0, same.stdout + same.stderr
    other = broker(
        "policy",
        "diff",
        str(original),
        str(DATA / "intercept_policy_md_github.yaml"),
        "--servers",
        str(servers),
    )
    assert other.returncode == 1 and "delete_customer" in other.stdout
