"""The `broker` command line as a user runs it: a real subprocess, exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def broker(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args], capture_output=True, text=True, timeout=60, cwd=cwd or REPO
    )


def test_policy_check_accepts_the_shipped_policies() -> None:
    result = broker(
        "policy", "check", "policies/seed.json", "policies/exchange.yaml", "broker/demo/policy.yaml"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (revision") == 3
    assert result.stdout.count("; native format)\n") == 3


def test_policy_check_reports_the_line_of_each_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('version: "1"\ndefault: deny\nrules:\n  - tool: get_*\n    acton: allow\n')
    result = broker("policy", "check", str(bad))
    assert result.returncode == 2
    assert f"{bad}:5:" in result.stderr
    assert "action" in result.stderr


def test_policy_check_reports_json_syntax_errors_with_position(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1",\n "default": "deny",\n "hide": [x]}\n')
    result = broker("policy", "check", str(bad))
    assert result.returncode == 2
    assert f"{bad}:3:" in result.stderr


def test_explain_prints_the_decision_and_the_winning_rule() -> None:
    result = broker(
        "policy", "explain", "broker/demo/policy.yaml", "place_order", "--args", '{"quantity": 50}'
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("policy:    broker/demo/policy.yaml (native format)\n")
    assert "require_approval" in result.stdout
    small = broker(
        "policy", "explain", "broker/demo/policy.yaml", "place_order", "--args", '{"quantity": 1}', "--json"
    )
    assert small.returncode == 0, small.stderr
    decision = json.loads(small.stdout)
    assert decision["action"] == "allow" and decision["format"] == "native"
    assert decision["rule"].startswith("rules[2]")


def test_explain_rejects_bad_arguments_with_exit_code_2() -> None:
    result = broker("policy", "explain", "broker/demo/policy.yaml", "place_order", "--args", "{oops")
    assert result.returncode == 2
    assert "--args is not valid JSON" in result.stderr
    missing = broker("policy", "explain", "no/such/file.yaml", "x")
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    usage = broker("policy", "frobnicate")
    assert usage.returncode == 2


def test_serve_refuses_to_start_with_an_invalid_policy(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text('version: "2"\n')
    (tmp_path / "servers.json").write_text('{"mcpServers": {}}')
    (tmp_path / "broker.yaml").write_text("servers: servers.json\npolicy: policy.yaml\n")
    result = broker("serve", "--config", str(tmp_path / "broker.yaml"))
    assert result.returncode == 2
    assert "refusing to start" in result.stderr
    assert "policy.yaml:1:" in result.stderr


def test_serve_rejects_a_broken_config(tmp_path: Path) -> None:
    (tmp_path / "broker.yaml").write_text(
        "servers: servers.json\npolicy: policy.yaml\nlisten: {port: seventy}\n"
    )
    result = broker("serve", "--config", str(tmp_path / "broker.yaml"))
    assert result.returncode == 2
    assert "listen.port" in result.stderr


def test_policy_check_and_explain_report_unreadable_files_with_exit_code_2(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes('version: "1"\ndefault: deny\n# café\n'.encode("latin-1"))
    huge = tmp_path / "huge.json"
    huge.write_text('{"version": "1",\n "default": ' + "9" * 5000 + "}\n")
    checked = broker("policy", "check", str(latin), str(huge))
    assert checked.returncode == 2
    assert "Traceback" not in checked.stderr
    assert f"{latin}:3:6: not valid UTF-8" in checked.stderr
    assert f"{huge}:2:13: number too long" in checked.stderr
    explained = broker("policy", "explain", str(latin), "get_ticker")
    assert explained.returncode == 2
    assert "Traceback" not in explained.stderr
    assert f"{latin}:3:6: not valid UTF-8" in explained.stderr


def test_serve_refuses_unreadable_config_and_policy_files_with_exit_code_2(tmp_path: Path) -> None:
    (tmp_path / "servers.json").write_text('{"mcpServers": {}}')
    config = tmp_path / "broker.yaml"
    config.write_bytes("servers: servers.json\npolicy: policy.yaml\n# café\n".encode("latin-1"))
    bad_config = broker("serve", "--config", str(config))
    assert bad_config.returncode == 2
    assert "Traceback" not in bad_config.stderr
    assert f"{config}:3:6: not valid UTF-8" in bad_config.stderr

    config.write_text("servers: servers.json\npolicy: policy.yaml\nlisten: {port: " + "9" * 5000 + "}\n")
    long_number = broker("serve", "--config", str(config))
    assert long_number.returncode == 2
    assert "Traceback" not in long_number.stderr
    assert f"{config}: cannot be loaded" in long_number.stderr

    config.write_text("servers: servers.json\npolicy: policy.yaml\n")
    (tmp_path / "policy.yaml").write_bytes('version: "1"\ndefault: deny\n# café\n'.encode("latin-1"))
    bad_policy = broker("serve", "--config", str(config))
    assert bad_policy.returncode == 2
    assert "Traceback" not in bad_policy.stderr
    assert (
        "refusing to start" in bad_policy.stderr and "policy.yaml:3:6: not valid UTF-8" in bad_policy.stderr
    )


def test_tools_accept_and_events_refuse_bad_arguments_with_exit_code_2(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'never-created.db'}"
    for args, message in (
        (("accept", "add", "--hash", "cd21"), "--hash must be 12 to 64 lowercase hex digits"),
        (("accept", "--all", "--hash", "cd21ee019a1c"), "--hash goes with exactly one TOOL"),
        (("accept", "a", "b", "--hash", "cd21ee019a1c"), "--hash goes with exactly one TOOL"),
        (("events", "--limit", "0"), "--limit must be a positive number"),
    ):
        result = broker("tools", *args, "--database-url", url)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    assert not (tmp_path / "never-created.db").exists()
