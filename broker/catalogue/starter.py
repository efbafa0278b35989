"""A first policy for an operator to review: one rule per tool, chosen from its classification.

The text is written by hand rather than by a YAML emitter so that every rule carries a
comment saying why it was chosen. Tool and server names come from upstream servers, so
they are written as double-quoted YAML with every unusual character escaped, glob
characters in them are bracketed (``[*]``) so a tool called ``get_*`` gets a rule for
itself and not for every ``get_`` tool, and comments pass through `printable` so no name
can start a new line. A name that YAML cannot hold at all (a lone UTF-16 surrogate) gets
no rule: it falls through to ``default: deny``, and a comment says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from broker.catalogue.errors import StarterPolicyError
from broker.catalogue.model import Category, Risk, ToolClassification
from broker.catalogue.untrusted import printable
from broker.policy.decision import Action

APPROVAL_TIMEOUT_SECONDS: Final = 300
READ_RATE_LIMIT: Final = (60, 60)
WRITE_RATE_LIMIT: Final = (10, 60)
COMMENT_REASONS: Final = 2
# Separates server and tool in qualified names, as the policy engine reads them.
QUALIFIER: Final = "__"

_GLOB_CHARACTERS: Final = frozenset("*?[")
_LOCKED_AWAY: Final = frozenset({Category.CODE_EXECUTION, Category.CREDENTIALS})


@dataclass(frozen=True, slots=True)
class Verdict:
    """The rule a classification earns."""

    action: Action
    reason: str | None = None
    rate_limit: tuple[int, int] | None = None
    timeout: int | None = None


def verdict_for(category: Category, risk: Risk) -> Verdict:
    """Critical: a human approves. High: a human approves, except that code execution and
    credentials are denied outright (no approver can judge an arbitrary script or a secret's
    destination call by call). Medium writes and reads: allowed at 10 calls a minute; other
    medium findings: approval. Low: allowed, reads at 60 a minute."""
    label = f"{category.value} tool rated {risk.value}"
    if risk is Risk.CRITICAL:
        return Verdict(
            Action.REQUIRE_APPROVAL, f"{label}: a human approves every call", None, APPROVAL_TIMEOUT_SECONDS
        )
    if risk is Risk.HIGH and category in _LOCKED_AWAY:
        return Verdict(Action.DENY, f"{label}: denied until an operator decides otherwise")
    if risk is Risk.HIGH:
        return Verdict(
            Action.REQUIRE_APPROVAL, f"{label}: a human approves every call", None, APPROVAL_TIMEOUT_SECONDS
        )
    if risk is Risk.MEDIUM and category not in (Category.WRITE, Category.READ_ONLY):
        return Verdict(
            Action.REQUIRE_APPROVAL, f"{label}: a human approves every call", None, APPROVAL_TIMEOUT_SECONDS
        )
    if risk is Risk.LOW and category is Category.READ_ONLY:
        return Verdict(Action.ALLOW, rate_limit=READ_RATE_LIMIT)
    return Verdict(Action.ALLOW, rate_limit=WRITE_RATE_LIMIT)


def starter_policy_yaml(classifications: Sequence[ToolClassification], *, multiple_servers: bool) -> str:
    """A complete policy document (``version: "1"``, ``default: deny``) with one rule per tool.

    Rules name tools as ``server__tool`` when `multiple_servers`, else by bare name; then two
    servers offering the same name raise StarterPolicyError, because one bare-name rule would
    silently govern both. Rules run riskiest first, then by name; the same input always
    gives the same text.
    """
    chosen = _one_per_pattern(classifications, multiple_servers=multiple_servers)
    servers = {item.server for item in classifications}
    lines = [
        f"# Starting policy from `broker policy init`: {len(chosen)} tools on {len(servers)} "
        f"server{'' if len(servers) == 1 else 's'}.",
        "# Each rule was proposed from the tool's name, description, arguments and annotations.",
        "# Review every rule before relying on it; tools without a rule fall through to `default: deny`.",
        'version: "1"',
        "default: deny",
    ]
    rule_lines: list[str] = []
    skipped: list[str] = []
    for pattern_name, item in sorted(chosen.items(), key=lambda pair: (-pair[1].risk.rank, pair[0])):
        if not _yaml_can_hold(pattern_name):
            skipped.append(
                f"  # skipped {printable(pattern_name)}: its name is not valid Unicode (default: deny)"
            )
            continue
        rule_lines.extend(_rule(pattern_name, item))
    if not rule_lines:
        lines.append("rules: []")
        lines.extend(line.strip() for line in skipped)
    else:
        lines.append("rules:")
        lines.extend(skipped)
        lines.extend(rule_lines)
    return "\n".join(lines) + "\n"


def _one_per_pattern(
    classifications: Sequence[ToolClassification], *, multiple_servers: bool
) -> dict[str, ToolClassification]:
    chosen: dict[str, ToolClassification] = {}
    for item in classifications:
        if multiple_servers and not item.server:
            raise StarterPolicyError(f"tool '{printable(item.name)}' has no server name to qualify it with")
        name = f"{item.server}{QUALIFIER}{item.name}" if multiple_servers else item.name
        earlier = chosen.get(name)
        if earlier is not None and earlier.server != item.server:
            raise StarterPolicyError(
                f"tool '{printable(item.name)}' is offered by servers '{printable(earlier.server)}' and "
                f"'{printable(item.server)}'; rules must name it per server (multiple_servers=True)"
            )
        # A server listing one tool twice gets the stricter reading of the two.
        if earlier is None or (item.risk.rank, item.category.precedence) > (
            earlier.risk.rank,
            earlier.category.precedence,
        ):
            chosen[name] = item
    return chosen


def _rule(pattern_name: str, item: ToolClassification) -> list[str]:
    verdict = verdict_for(item.category, item.risk)
    lines = [f"  # {item.category.value}, {item.risk.value}"]
    lines.extend(f"  #   {printable(reason)}" for reason in item.reasons[:COMMENT_REASONS])
    lines.append(f"  - tool: {_yaml_string(_literal_pattern(pattern_name))}")
    lines.append(f"    action: {verdict.action.value}")
    if verdict.timeout is not None:
        lines.append(f"    timeout: {verdict.timeout}")
    if verdict.rate_limit is not None:
        max_calls, window = verdict.rate_limit
        lines.append(f"    rate_limit: {{max: {max_calls}, window: {window}}}")
    if verdict.reason is not None:
        lines.append(f"    reason: {_yaml_string(verdict.reason)}")
    return lines


def _literal_pattern(name: str) -> str:
    """A pattern matching exactly `name`: glob characters and edge whitespace in brackets."""
    last = len(name) - 1
    return "".join(
        f"[{char}]" if char in _GLOB_CHARACTERS or (char.isspace() and index in (0, last)) else char
        for index, char in enumerate(name)
    )


def _yaml_can_hold(text: str) -> bool:
    return not any(0xD800 <= ord(char) <= 0xDFFF for char in text)


def _yaml_string(text: str) -> str:
    """`text` as a YAML double-quoted scalar that both PyYAML loaders read back unchanged."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif _yaml_printable(code):
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _yaml_printable(code: int) -> bool:
    # YAML's printable set, minus the line and paragraph separators and the byte-order mark,
    # which readers treat as line breaks or strip.
    return (
        0x20 <= code <= 0x7E
        or (0xA0 <= code <= 0xD7FF and code not in (0x2028, 0x2029))
        or (0xE000 <= code <= 0xFFFD and code != 0xFEFF)
        or 0x10000 <= code <= 0x10FFFF
    )
