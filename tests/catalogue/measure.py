"""Measure the catalogue classifier against the hand-labelled real tools.

    python -m tests.catalogue.measure          # the table the issue asks for
    python -m tests.catalogue.measure --misses # and every disagreement, with the first reason

The labelled set is tests/catalogue/fixtures/real (see its SOURCES.md). The numbers are
per risk class (precision and recall, one class against the rest), per category, plus
high-or-critical recall, and the tools whose label says they move money, place or cancel
orders or reveal keys but that the classifier rates low (there must be none).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.catalogue import Category, Risk, ToolClassification, classify_tool

REAL = Path(__file__).with_name("fixtures") / "real"
RISKS = tuple(risk.value for risk in Risk)
CATEGORIES = tuple(category.value for category in Category)
SEVERE = frozenset({Risk.HIGH.value, Risk.CRITICAL.value})


@dataclass(frozen=True, slots=True)
class Labelled:
    server: str
    name: str
    category: str
    risk: str
    why: str
    guards: str | None
    result: ToolClassification


def load_servers() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(REAL.glob("*.json"))}


def labelled_tools() -> list[Labelled]:
    out = []
    for server, document in load_servers().items():
        definitions = {tool["name"]: tool for tool in document["tools"]}
        labels = json.loads((REAL / "labels" / f"{server}.json").read_text())["labels"]
        for label in labels:
            result = classify_tool(definitions[label["name"]], server)
            out.append(
                Labelled(
                    server,
                    label["name"],
                    label["category"],
                    label["risk"],
                    label["why"],
                    label.get("guards"),
                    result,
                )
            )
    return out


@dataclass(frozen=True, slots=True)
class Score:
    support: int
    predicted: int
    correct: int

    @property
    def precision(self) -> float:
        return self.correct / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.correct / self.support if self.support else 1.0


def score(pairs: list[tuple[str, str]], value: str) -> Score:
    """`pairs` are (labelled, predicted); one class against the rest."""
    return Score(
        support=sum(label == value for label, _ in pairs),
        predicted=sum(predicted == value for _, predicted in pairs),
        correct=sum(label == predicted == value for label, predicted in pairs),
    )


def risk_scores(tools: list[Labelled]) -> dict[str, Score]:
    pairs = [(tool.risk, tool.result.risk.value) for tool in tools]
    return {risk: score(pairs, risk) for risk in RISKS}


def category_scores(tools: list[Labelled]) -> dict[str, Score]:
    pairs = [(tool.category, tool.result.category.value) for tool in tools]
    return {category: score(pairs, category) for category in CATEGORIES}


def severe_recall(tools: list[Labelled]) -> Score:
    """High-or-critical as one class: a severe tool rated severe at either level counts."""
    pairs = [
        ("severe" if tool.risk in SEVERE else "-", "severe" if tool.result.risk.value in SEVERE else "-")
        for tool in tools
    ]
    return score(pairs, "severe")


def guarded_rated_low(tools: list[Labelled]) -> list[Labelled]:
    return [tool for tool in tools if tool.guards and tool.result.risk is Risk.LOW]


def _row(name: str, result: Score) -> str:
    return (
        f"| {name} | {result.support} | {result.predicted} | {result.correct} | "
        f"{result.precision:.3f} | {result.recall:.3f} |"
    )


def report(tools: list[Labelled], *, misses: bool = False) -> str:
    header = "| class | labelled | predicted | correct | precision | recall |\n|---|---|---|---|---|---|"
    risks = risk_scores(tools)
    categories = category_scores(tools)
    severe = severe_recall(tools)
    low = guarded_rated_low(tools)
    servers = Counter(tool.server for tool in tools)
    exact_risk = sum(tool.risk == tool.result.risk.value for tool in tools)
    lines = [
        f"{len(tools)} labelled tools from {len(servers)} servers: "
        + ", ".join(f"{server} {count}" for server, count in sorted(servers.items())),
        "",
        "Risk",
        header,
        *(_row(risk, risks[risk]) for risk in RISKS),
        _row("high or critical", severe),
        f"exact risk {exact_risk}/{len(tools)}",
        "",
        "Category",
        header,
        *(_row(category, categories[category]) for category in CATEGORIES),
        "",
        f"money/order/key tools rated low: {len(low)}"
        + "".join(f"\n  {tool.server}/{tool.name} ({tool.guards})" for tool in low),
    ]
    if misses:
        lines += ["", "Disagreements on risk (labelled -> predicted):"]
        for tool in tools:
            if tool.risk != tool.result.risk.value:
                lines.append(
                    f"  {tool.server}/{tool.name}: {tool.category}/{tool.risk} -> "
                    f"{tool.result.category.value}/{tool.result.risk.value} ({tool.result.reasons[0]})"
                )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    print(report(labelled_tools(), misses="--misses" in argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
