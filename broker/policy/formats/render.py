"""The native policy YAML for a translated document, with comments saying where each rule came from.

Used by ``broker policy convert``. Top-level keys and each rule are written in block style;
values inside a rule (``unless``, ``when``, ``limits`` entries, lists) are written as JSON,
which YAML reads as flow collections, so quoting is always right. Every rule is preceded by
a comment naming the line of the foreign file it was compiled from.
"""

from __future__ import annotations

import json

from broker.policy.document import MappingNode, Node, SequenceNode, to_python
from broker.policy.formats.detect import Format


def render_native(native: MappingNode, *, found: Format, source: str) -> str:
    lines = [
        f"# Converted from {found.title if found is not Format.NATIVE else 'a native policy'} {source} "
        "by 'broker policy convert'.",
        "# The broker loads the original unchanged; this file decides the same calls the same way.",
        "# Edit this one to use what only the native format says (require_approval, agents, ...).",
    ]
    for key, value in native:
        if key.name == "rules" and isinstance(value, SequenceNode):
            lines.append("rules:")
            for rule in value.items:
                lines += _rule(rule, source)
        else:
            lines.append(f"{key.name}: {_flow(value)}")
    return "\n".join(lines) + "\n"


def _rule(rule: Node, source: str) -> list[str]:
    assert isinstance(rule, MappingNode)
    out = [f"  # from {source} line {rule.line}"]
    for index, (key, value) in enumerate(rule):
        lead = "  - " if index == 0 else "    "
        if isinstance(value, SequenceNode) and value.items:
            out.append(f"{lead}{key.name}:")
            out += [f"      - {_flow(item)}" for item in value.items]
        else:
            out.append(f"{lead}{key.name}: {_flow(value)}")
    return out


def _flow(node: Node) -> str:
    return json.dumps(to_python(node), ensure_ascii=False)
