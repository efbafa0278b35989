"""Classifications for people (a terminal table) and for programs (JSON)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from broker.catalogue.model import ToolClassification
from broker.catalogue.untrusted import printable

TABLE_COLUMNS = ("tool", "server", "category", "risk", "top reason")
# Past this a reason wraps on an ordinary terminal; the JSON form keeps every reason whole.
MAX_REASON_WIDTH = 90


def riskiest_first(classifications: Sequence[ToolClassification]) -> list[ToolClassification]:
    return sorted(classifications, key=lambda item: (-item.risk.rank, item.name, item.server))


def render_table(classifications: Sequence[ToolClassification]) -> str:
    """A plain-text table, riskiest tools first, then by name."""
    rows = [
        (
            printable(item.name),
            printable(item.server),
            item.category.value,
            item.risk.value,
            _clip(printable(item.reasons[0]) if item.reasons else ""),
        )
        for item in riskiest_first(classifications)
    ]
    return "\n".join(aligned(TABLE_COLUMNS, rows)) + "\n"


def to_json(classifications: Sequence[ToolClassification]) -> str:
    """JSON array of classifications (riskiest first), each as `ToolClassification.to_dict`."""
    return json.dumps(
        [item.to_dict() for item in riskiest_first(classifications)], indent=2, ensure_ascii=False
    )


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON_WIDTH else text[: MAX_REASON_WIDTH - 1] + "…"


def aligned(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Header, rule and rows as lines of left-aligned columns."""
    widths = [max([len(header), *(len(row[index]) for row in rows)]) for index, header in enumerate(headers)]
    lines = [_line(headers, widths), _line(tuple("-" * width for width in widths), widths)]
    lines.extend(_line(row, widths) for row in rows)
    return lines


def _line(cells: tuple[str, ...], widths: list[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
