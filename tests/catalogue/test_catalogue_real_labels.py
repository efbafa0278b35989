"""The classifier against 509 real tools from ten public MCP servers, labelled by hand.

The definitions and labels are in fixtures/real (SOURCES.md says where each came from and
how the labels were made; labels were never derived from classifier output). The targets
are issue 13's: critical precision >= 0.8 and recall >= 0.9, high-or-critical recall >=
0.98, and no tool that moves money, places or cancels orders or reveals keys rated low.
`python -m tests.catalogue.measure --misses` prints the full table and every disagreement.
"""

from __future__ import annotations

from collections import Counter

import pytest

from broker.catalogue import Category, Risk
from tests.catalogue.measure import (
    REAL,
    Labelled,
    guarded_rated_low,
    labelled_tools,
    load_servers,
    report,
    risk_scores,
    score,
    severe_recall,
)


@pytest.fixture(scope="module")
def tools() -> list[Labelled]:
    return labelled_tools()


def test_the_set_is_real_large_and_fully_labelled(tools: list[Labelled]) -> None:
    servers = load_servers()
    defined = {(server, tool["name"]) for server, doc in servers.items() for tool in doc["tools"]}

    assert len(tools) >= 500
    assert len(servers) >= 5
    assert {(tool.server, tool.name) for tool in tools} == defined
    assert len(defined) == len(tools)
    assert all(tool.why.strip() and "\n" not in tool.why for tool in tools)
    assert {tool.category for tool in tools} == {category.value for category in Category}
    assert {tool.risk for tool in tools} == {risk.value for risk in Risk}
    for server, doc in servers.items():
        assert len(doc["commit"]) == 40, server
        assert all(
            tool["source"].startswith(f"{doc['repository']}@{doc['commit']} ") for tool in doc["tools"]
        )
        assert server in (REAL / "SOURCES.md").read_text()


def test_every_guard_is_labelled_severe_enough(tools: list[Labelled]) -> None:
    guarded = Counter(tool.guards for tool in tools if tool.guards)

    assert set(guarded) == {"money", "orders", "keys"}
    assert all(tool.risk != Risk.LOW.value for tool in tools if tool.guards)


def test_critical_precision_and_recall_meet_the_targets(
    tools: list[Labelled], capsys: pytest.CaptureFixture[str]
) -> None:
    critical = risk_scores(tools)[Risk.CRITICAL.value]
    with capsys.disabled():
        print("\n" + report(tools))

    summary = f"critical precision {critical.precision:.3f}, recall {critical.recall:.3f}"
    assert critical.precision >= 0.8, summary
    assert critical.recall >= 0.9, summary


def test_high_or_critical_recall_meets_the_target(tools: list[Labelled]) -> None:
    severe = severe_recall(tools)
    missed = [
        f"{tool.server}/{tool.name}: {tool.risk} -> {tool.result.risk.value}"
        for tool in tools
        if tool.risk in ("high", "critical") and tool.result.risk in (Risk.LOW, Risk.MEDIUM)
    ]

    assert severe.recall >= 0.98, missed


def test_no_money_order_or_key_tool_is_rated_low(tools: list[Labelled]) -> None:
    low = [f"{tool.server}/{tool.name} ({tool.guards})" for tool in guarded_rated_low(tools)]

    assert low == []


def test_the_measure_counts_what_it_is_given() -> None:
    """The scoring itself, on a hand-made pair list, so a broken scorer cannot pass the targets."""
    pairs = [("critical", "critical"), ("critical", "high"), ("low", "critical"), ("low", "low")]
    result = score(pairs, "critical")

    assert (result.support, result.predicted, result.correct) == (2, 2, 1)
    assert (result.precision, result.recall) == (0.5, 0.5)
