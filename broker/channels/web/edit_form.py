"""The web inbox's "approve with edits" form: one input per editable argument of a held call.

The form (templates/_edit_form.html) posts to the same approve endpoint as the plain button, with
``edit.<name>`` fields and ``seen_hash``, the arguments the approver was shown. Typed values stay
typed: what is typed into a field whose current value is a number (or true/false, a list, an
object) is read as JSON, a string field keeps the text (broker.approvals.edits.parse_text); the
service then checks it against the tool's inputSchema and the policy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from broker.approvals.edits import MISSING, parse_text
from broker.approvals.model import Approval

PREFIX = "edit."


def edits_from_form(form: Mapping[str, Any], approval: Approval | None) -> dict[str, Any] | None:
    """The edits a submitted form carries; None for the plain Approve button."""
    names = [key for key in form if isinstance(key, str) and key.startswith(PREFIX)]
    if not names:
        return None
    current = approval.arguments if approval is not None else {}
    return {
        key[len(PREFIX) :]: parse_text(str(form[key]), None, current.get(key[len(PREFIX) :], MISSING))
        for key in names
    }


def field_value(value: object) -> str:
    """A current value as the input shows it (strings as they are, anything else as JSON)."""
    if value is MISSING or value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def editable_fields(approval: Approval) -> list[tuple[str, str, str]]:
    """(name, shown value, input type) per editable argument, in the rule's order."""
    fields = []
    for name in approval.editable:
        value = approval.arguments.get(name, MISSING)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        fields.append((name, field_value(value), "number" if number else "text"))
    return fields
