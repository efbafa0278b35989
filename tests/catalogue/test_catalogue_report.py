from __future__ import annotations

import json

from broker.catalogue import Category, Risk, ToolClassification, render_table, to_json

ITEMS = [
    ToolClassification(
        "market", "get_price", Category.READ_ONLY, Risk.LOW, ("name token 'get' suggests a query",)
    ),
    ToolClassification("wallet", "withdraw", Category.FINANCIAL, Risk.CRITICAL, ("moves money", "second")),
    ToolClassification("notes", "add_note", Category.WRITE, Risk.MEDIUM, ("changes state",)),
    ToolClassification("wallet", "approve", Category.FINANCIAL, Risk.CRITICAL, ("allowance",)),
    ToolClassification("chat", "post", Category.EXTERNAL_COMMUNICATION, Risk.HIGH, ("messages",)),
]


def test_table_lists_riskiest_first_then_by_name() -> None:
    lines = render_table(ITEMS).splitlines()

    assert lines[0].split() == ["tool", "server", "category", "risk", "top", "reason"]
    assert set(lines[1]) <= {"-", " "}
    assert [line.split()[0] for line in lines[2:]] == ["approve", "withdraw", "post", "add_note", "get_price"]
    assert lines[3].split(maxsplit=4) == ["withdraw", "wallet", "financial", "critical", "moves money"]
    assert "second" not in render_table(ITEMS)


def test_table_columns_line_up() -> None:
    lines = render_table(ITEMS).splitlines()

    server_column = lines[0].index("server")
    assert all(line[server_column - 2 : server_column] == "  " for line in lines[2:])


def test_table_escapes_control_characters_and_clips_long_reasons() -> None:
    item = ToolClassification("srv\x1b[2J", "evil\nname", Category.WRITE, Risk.MEDIUM, ("x" * 200,))

    text = render_table([item])

    assert "\x1b" not in text
    assert "evil\\x0aname" in text
    assert text.count("\n") == 3
    assert "x" * 89 + "…" in text


def test_empty_table_has_headers_only() -> None:
    assert render_table([]).splitlines()[0].split()[0] == "tool"
    assert len(render_table([]).splitlines()) == 2


def test_json_form_round_trips_in_table_order() -> None:
    documents = json.loads(to_json(ITEMS))

    assert [document["name"] for document in documents] == [
        "approve",
        "withdraw",
        "post",
        "add_note",
        "get_price",
    ]
    assert documents[1] == {
        "server": "wallet",
        "name": "withdraw",
        "category": "financial",
        "risk": "critical",
        "reasons": ["moves money", "second"],
    }
