"""`broker approvals ...`, `broker audit verify` and `broker db upgrade` as an operator runs them."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from pathlib import Path

import anyio
import pytest

from tests.e2e.harness import APPROVER_TOKENS, exchange_server, make_settings, running_broker
from tests.e2e.test_approvals_flow import BIG_ORDER, POLICY, watch

pytestmark = pytest.mark.anyio


async def cli(*args: str) -> tuple[int, str, str]:
    result = await anyio.run_process([sys.executable, "-m", "broker", *args], check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_an_operator_lists_inspects_and_decides_from_the_command_line(tmp_path: Path) -> None:
    async with running_broker(make_settings(tmp_path, POLICY, exchange_server())) as running:
        feed = watch(running)
        api = ["--url", running.url, "--token", APPROVER_TOKENS["alice"]]
        with anyio.fail_after(60):
            async with running.client() as client, anyio.create_task_group() as tasks:
                tasks.start_soon(client.call_tool, "place_order", BIG_ORDER)
                approval = await feed.opened.receive()

                code, out, err = await cli("approvals", "list", *api)
                assert code == 0, err
                assert approval.id in out and "place_order" in out

                code, out, _ = await cli("approvals", "show", approval.id, *api, "--json")
                shown = json.loads(out)
                assert shown["arguments"] == BIG_ORDER and shown["can_decide"] is True

                code, out, err = await cli("approvals", "show", approval.id, *api)
                assert code == 0, err
                lines = [line.strip() for line in out.splitlines()]
                start = lines.index("arguments: (* = looked at by the rule that held the call)") + 1
                # The condition's field first, then the agent's order (not alphabetical).
                assert lines[start : start + 4] == [
                    "* quantity: 10",
                    "symbol: BTCUSD",
                    "side: buy",
                    "price: 90000",
                ]
                assert "held because: quantity = 10 > 5" in lines
                assert any(line.startswith("risk: financial, critical") for line in lines)
                assert "waiting: 1 agent call; an agent is waiting for the answer now" in lines

                code, out, err = await cli("approvals", "approve", approval.id, "--reason", "ok", *api)
                assert code == 0, err
                assert f"{approval.id}: approved by alice" in out

                code, _, err = await cli("approvals", "deny", approval.id, *api)
                assert code == 2
                assert re.search(r"already (approved|released|completed): decided by alice via api at ", err)

        code, _, err = await cli("approvals", "list", "--url", running.url, "--token", "wrong")
        assert code == 2 and "401: unknown approver token" in err
    code, _, err = await cli("approvals", "list", "--url", "http://127.0.0.1:9", "--token", "x")
    assert code == 2 and "cannot reach the broker" in err


async def test_audit_verify_detects_modified_and_deleted_rows(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, POLICY, exchange_server())
    async with running_broker(settings) as running:
        with anyio.fail_after(30):
            async with running.client() as client:
                result = await client.call_tool("get_balances", {})  # expires after 1 s: several audit events
                assert result.is_error
    url = settings.database_url
    code, out, err = await cli("audit", "verify", "--database-url", url)
    assert code == 0, err
    assert "audit log intact" in out
    head = re.search(r"head (\d+:[0-9a-f]{64})", out)
    assert head is not None, out

    database = url.removeprefix("sqlite:///")
    # The newest row removed: the chain itself stays consistent, but the approval's status
    # needs an event that is gone, and the recorded head is gone too.
    with sqlite3.connect(database) as conn:
        newest = conn.execute("SELECT * FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
        conn.execute("DELETE FROM audit_events WHERE seq = ?", (newest[0],))
    code, _, err = await cli("audit", "verify", "--database-url", url)
    assert code == 1 and "missing_events" in err, err
    code, _, err = await cli("audit", "verify", "--database-url", url, "--expect-head", head.group(1))
    assert code == 1, err
    with sqlite3.connect(database) as conn:
        conn.execute(f"INSERT INTO audit_events VALUES ({', '.join('?' * len(newest))})", newest)
    code, _, err = await cli("audit", "verify", "--database-url", url, "--expect-head", head.group(1))
    assert code == 0, err
    code, _, err = await cli("audit", "verify", "--database-url", url, "--expect-head", "nonsense")
    assert code == 2 and "--expect-head" in err

    with sqlite3.connect(database) as conn:
        (actor,) = conn.execute("SELECT actor FROM audit_events WHERE seq = 1").fetchone()
        conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
    code, _, err = await cli("audit", "verify", "--database-url", url)
    assert code == 1 and "BROKEN at seq 1" in err

    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE audit_events SET actor = ? WHERE seq = 1", (actor,))
    code, _, err = await cli("audit", "verify", "--database-url", url)
    assert code == 0, err

    with sqlite3.connect(database) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = 2")
    code, _, err = await cli("audit", "verify", "--database-url", url)
    assert code == 1 and "seq 2" in err


async def test_db_upgrade_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    for _ in range(2):
        code, out, err = await cli("db", "upgrade", "--database-url", url)
        assert code == 0, err
        assert "database at revision" in out


def test_show_prints_multi_line_values_as_indented_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    from broker.cli.approvals import _print_fields

    _print_fields(
        [
            {"name": "to", "text": "a@example.com", "shape": "short", "decisive": True, "size": 13},
            {
                "name": "body",
                "text": "Hello,\n\nwire it.",
                "shape": "multiline",
                "decisive": False,
                "size": 16,
            },
        ]
    )
    assert capsys.readouterr().out.splitlines()[1:] == [
        " " * 19 + "* to: a@example.com",
        " " * 21 + "body: |  (16 characters)",
        " " * 25 + "Hello,",
        " " * 25,
        " " * 25 + "wire it.",
    ]
