"""What a tool's MCP annotations claim, and how far that claim may move a rating.

The four hints (``readOnlyHint``, ``destructiveHint``, ``idempotentHint``,
``openWorldHint``) are read as one claim. They come from a server we do not trust, so they
are used asymmetrically: they may raise the rating freely (``destructiveHint: true`` claims
destructive/high; ``readOnlyHint: false`` claims write/medium, or
external_communication/high when ``openWorldHint: true`` says the writes reach outside
systems), and may lower it only when the other evidence is weak (at most write/medium).
``idempotentHint`` never changes the rating (one call does its harm however often it is
repeated) but is reported. The returned note says whether the hints were used, agreed, were
overridden, or were missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from broker.catalogue.model import Category, Risk

ANNOTATION_HINTS: Final = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
_WEAK_EVIDENCE: Final = frozenset({Category.READ_ONLY, Category.WRITE})


@dataclass(frozen=True, slots=True)
class Claim:
    """What the annotations say; `category` is None when they do not say what the tool does."""

    category: Category | None
    risk: Risk
    reason: str


def read_hints(annotations: object, notes: list[str]) -> dict[str, bool]:
    """The boolean hints present; anything malformed is noted and ignored."""
    if annotations is None:
        return {}
    if not isinstance(annotations, Mapping):
        notes.append("annotations are not an object and were ignored")
        return {}
    hints: dict[str, bool] = {}
    for key in ANNOTATION_HINTS:
        value = annotations.get(key)
        if isinstance(value, bool):
            hints[key] = value
        elif value is not None:
            notes.append(f"annotation {key} is not a boolean and was ignored")
    return hints


def claim_of(hints: Mapping[str, bool], evidence: Category) -> Claim | None:
    """What the four hints together say the tool is, or None when the server gave none."""
    if not hints:
        return None
    read_only = hints.get("readOnlyHint")
    destructive = hints.get("destructiveHint")
    open_world = hints.get("openWorldHint")
    said = ", ".join(f"{key}={str(value).lower()}" for key, value in hints.items())
    if destructive is True:
        if read_only is True:
            return Claim(
                Category.DESTRUCTIVE,
                Risk.HIGH,
                f"annotations ({said}) contradict each other; the riskier, destructive, is believed",
            )
        return Claim(Category.DESTRUCTIVE, Risk.HIGH, f"annotations ({said}) say it may destroy data")
    writes = read_only is False or (read_only is None and evidence is not Category.READ_ONLY)
    if writes and open_world is True:
        return Claim(
            Category.EXTERNAL_COMMUNICATION,
            Risk.HIGH,
            f"annotations ({said}) say it changes state in an open world of outside systems",
        )
    if read_only is False:
        return Claim(Category.WRITE, Risk.MEDIUM, f"annotations ({said}) say it changes state")
    if read_only is True:
        where = "; it reads from outside systems" if open_world is True else ""
        return Claim(Category.READ_ONLY, Risk.LOW, f"annotations ({said}) say it only reads{where}")
    return Claim(None, Risk.LOW, f"annotations ({said}) do not say whether it reads, writes or destroys")


def apply_hints(
    hints: Mapping[str, bool], category: Category, risk: Risk, reasons: list[str]
) -> tuple[Category, Risk, list[str], str]:
    """The rating after weighing the hints against the evidence, the reasons, and the note."""
    claim = claim_of(hints, category)
    if claim is None:
        note = "no MCP annotations; classified from name, description and arguments"
        return category, risk, [*reasons, note], note
    said = claim.reason
    if claim.category is None:
        return category, risk, [*reasons, said], said
    evidence = (risk.rank, category.precedence)
    if (claim.risk.rank, claim.category.precedence) > evidence:
        note = f"{said}: raises the rating from {category.value}/{risk.value}"
        return claim.category, claim.risk, [note, *reasons], note
    if (claim.category, claim.risk) == (category, risk):
        note = f"{said}: agrees"
        return category, risk, [*reasons[:1], note, *reasons[1:]], note
    if claim.risk == risk:
        note = f"{said}: agrees on {risk.value} risk; {category.value} is the more telling category"
        return category, risk, [*reasons[:1], note, *reasons[1:]], note
    if category in _WEAK_EVIDENCE and risk <= Risk.MEDIUM:
        note = f"{said}: accepted, since name and description only weakly suggest {category.value}"
        return claim.category, claim.risk, [note, *reasons], note
    note = (
        f"{said}: overridden, since name, description or arguments say {category.value}/{risk.value} "
        "(annotations are untrusted hints and never lower strong evidence)"
    )
    return category, risk, [*reasons[:1], note, *reasons[1:]], note
