"""`broker tools scan`, `broker policy init` and `broker policy diff` against real upstream processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from broker.policy import load_policy
from broker.policy.decision import Action
from tests.e2e.test_cli import broker

SERVERS = {
    "mcpServers": {
        "exchange": {"command": sys.executable, "args": ["-m", "broker.demo.exchange"]},
        "time": {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]},
    }
}


def servers_file(tmp_path: Path, document: dict[str, object] = SERVERS) -> str:
    path = tmp_path / "servers.json"
    path.write_text(json.dumps(document))
    return str(path)


def test_scan_classifies_every_upstream_tool(tmp_path: Path) -> None:
    result = broker("tools", "scan", "--servers", servers_file(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    rows = {(row["server"], row["name"]): row for row in json.loads(result.stdout)}
    assert rows["exchange", "binance_us_cust_cancel_order"]["risk"] == "critical"
    assert rows["exchange", "withdraw"]["category"] == "financial"
    assert rows["exchange", "get_ticker"]["category"] == "read_only"
    assert rows["time", "get_current_time"]["risk"] == "low"
    assert all(row["reasons"] for row in rows.values())
    table = broker("tools", "scan", "--servers", servers_file(tmp_path))
    assert table.stdout.splitlines()[2].startswith(("binance_us_cust_cancel_order", "withdraw"))


def test_init_proposes_a_policy_that_loads_and_holds_critical_tools(tmp_path: Path) -> None:
    result = broker("policy", "init", "--servers", servers_file(tmp_path))
    assert result.returncode == 0, result.stderr
    policy = load_policy(result.stdout, source="init.yaml")
    assert policy.default is Action.DENY
    cancel = policy.decide("binance_us_cust_cancel_order", server="exchange")
    assert cancel.action is Action.REQUIRE_APPROVAL
    ticker = policy.decide("get_ticker", server="exchange")
    assert ticker.action is Action.ALLOW and ticker.rate_limit is not None
    assert "# destructive, critical" in result.stdout


def test_diff_lists_only_tools_whose_decision_changes(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    new = tmp_path / "new.yaml"
    old.write_text('version: "1"\ndefault: deny\nrules:\n  - tool: "get_*"\n    action: allow\n')
    new.write_text(
        'version: "1"\ndefault: deny\nrules:\n  - tool: "get_*"\n    action: allow\n  - tool: withdraw\n    action: require_approval\n'
    )
    result = broker("policy", "diff", str(old), str(new), "--servers", servers_file(tmp_path), "--json")
    assert result.returncode == 1, result.stderr  # decisions change
    changes = json.loads(result.stdout)
    assert [change["tool"]["exposed_name"] for change in changes] == ["exchange__withdraw"]
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text('version: "1"\ndefault: deny\nrules:\n  - {id: reads, tool: "get_*", action: allow}\n')
    same = broker("policy", "diff", str(old), str(renamed), "--servers", servers_file(tmp_path))
    assert same.returncode == 0, same.stderr


def test_an_unreachable_upstream_is_reported_and_the_rest_is_scanned(tmp_path: Path) -> None:
    document = {"mcpServers": {**SERVERS["mcpServers"], "gone": {"url": "http://127.0.0.1:9/mcp"}}}  # type: ignore[dict-item]
    result = broker("tools", "scan", "--servers", servers_file(tmp_path, document), "--timeout", "5")
    assert result.returncode == 0
    assert "upstream 'gone' could not be listed" in result.stderr
    assert "get_ticker" in result.stdout


def test_scan_without_upstreams_is_a_usage_error(tmp_path: Path) -> None:
    assert broker("tools", "scan").returncode == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"mcpServers": {"a__b": {"command": "x"}}}')
    result = broker("tools", "scan", "--servers", str(bad))
    assert result.returncode == 2 and "a__b" in result.stderr


def test_diff_shows_loosened_conditions_and_rules_for_one_agent(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    new = tmp_path / "new.yaml"
    old.write_text(
        'version: "1"\ndefault: deny\nrules:\n'
        "  - {tool: place_order, action: allow}\n"
        '  - {tool: place_order, action: require_approval, when: {"args.quantity": {gt: 5}}}\n'
    )
    new.write_text(
        'version: "1"\ndefault: deny\nrules:\n'
        "  - {tool: place_order, action: allow}\n"
        '  - {tool: place_order, action: require_approval, when: {"args.quantity": {gt: 5000000}}}\n'
        "  - {tool: withdraw, action: allow, agents: [trading-bot]}\n"
    )

    result = broker("policy", "diff", str(old), str(new), "--servers", servers_file(tmp_path))

    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith("exchange__")}
    assert "when args.quantity gt 5000000: require_approval" in rows["exchange__place_order"]
    assert "every agent" in rows["exchange__place_order"]
    assert "trading-bot" in rows["exchange__withdraw"]
    assert set(rows) == {"exchange__place_order", "exchange__withdraw"}
    assert "2 tools change." in lines
