"""Tool-definition events: the audit record of pinned tool definitions (broker.catalogue.pins).

Three kinds, each one row of the store's ``tool_events`` table (migration 0016):

* ``seen``: a replica saw a tool for the first time (``accepted`` follows at once, by
  ``first-use``, under trust on first use);
* ``changed``: an upstream now offers another definition than the one last seen, with the old
  and new hash and `describe_change` of the two definitions (description text, input schema
  properties added/removed/changed, annotations), readable without the JSON;
* ``accepted``: someone (``broker tools accept``) or first use accepted the definition; the
  old hash is the one accepted before, the actor who accepted.

Each event is written in the transaction that changes the tool's pin, after the pin's row lock
(or its insert) was won, so several replicas listing the same upstream at once write one event
per change, and a definition that flips back and forth is recorded every time it flips.

Why not the hash-chained ``audit_events`` log (broker.approvals.audit)? Its rows are bound to an
approval: ``approval_id`` is NOT NULL with a foreign key, is hashed into every row, is typed
``str`` in every reader (the replicas' change feed reads it to refresh approvals), and
`broker audit verify` checks each approval's events against its status. Making it nullable
needs a rebuild of the whole audit table on SQLite (no ALTER COLUMN) in the migration and a
second kind of row in every reader, for events that concern no approval. A separate table keeps
the approval chain as it is; it is not hash-chained, which the README says.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from broker.approvals.canonical import canonical_json

TEXT_LIMIT: Final = 80
"""Characters of a description kept on each side of a change (the full text is in the definitions)."""
UNRECORDED: Final = "previous definition not recorded"


class ToolEventKind(enum.StrEnum):
    SEEN = "seen"
    CHANGED = "changed"
    ACCEPTED = "accepted"


@dataclass(frozen=True, slots=True)
class ToolEvent:
    id: int
    server: str
    tool: str
    kind: ToolEventKind
    old_hash: str | None
    new_hash: str
    actor: str
    at: datetime
    changes: tuple[str, ...]


def describe_change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Short readable lines saying what differs between two ``tools/list`` entries."""
    if old is None or new is None:
        return (UNRECORDED,)
    lines: list[str] = []
    if old.get("name") != new.get("name"):
        lines.append(f"name: {_short(old.get('name'))} -> {_short(new.get('name'))}")
    if old.get("description") != new.get("description"):
        lines.append(f"description: {_short(old.get('description'))} -> {_short(new.get('description'))}")
    lines.extend(_schema_changes(_mapping(old.get("inputSchema")), _mapping(new.get("inputSchema"))))
    lines.extend(
        _keyed_changes("annotation", _mapping(old.get("annotations")), _mapping(new.get("annotations")))
    )
    return tuple(lines) or ("no visible change (the definitions differ only in form)",)


def _schema_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    lines = _keyed_changes("property", _mapping(old.get("properties")), _mapping(new.get("properties")))
    old_required, new_required = _names(old.get("required")), _names(new.get("required"))
    lines += [f"required now: {name}" for name in sorted(new_required - old_required)]
    lines += [f"no longer required: {name}" for name in sorted(old_required - new_required)]
    for key in sorted(set(old) | set(new)):
        if key not in ("properties", "required") and _json(old.get(key)) != _json(new.get(key)):
            lines.append(f"schema {key}: {_short(old.get(key))} -> {_short(new.get(key))}")
    return lines


def _keyed_changes(what: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            lines.append(f"{what} added: {key} = {_short(new[key])}")
        elif key not in new:
            lines.append(f"{what} removed: {key}")
        elif _json(old[key]) != _json(new[key]):
            lines.append(f"{what} changed: {key}: {_short(old[key])} -> {_short(new[key])}")
    return lines


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _names(value: object) -> set[str]:
    return {name for name in value if isinstance(name, str)} if isinstance(value, list) else set()


def _json(value: object) -> str:
    try:
        return canonical_json(value)
    except ValueError:
        return repr(value)


def _short(value: object) -> str:
    text = value if isinstance(value, str) else _json(value)
    if len(text) > TEXT_LIMIT:
        text = text[: TEXT_LIMIT - 1] + "…"
    return repr(text) if isinstance(value, str) else text
