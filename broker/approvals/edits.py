"""Approve with edits: an approver changes named arguments of a held call, then approves it.

A rule lists the arguments approvers may change (``editable: [quantity, price]``, see
broker.policy.edits). An edit is checked here, purely, before anything is stored:

1. every edited name is editable for this call (the approval's rule listed it, and the rule in
   force still does) and, when the upstream tool's inputSchema is known, is one of its
   ``properties``, with a value of the JSON type (and ``enum``) the schema gives. Any other
   argument can never change: an edit naming one is refused, naming it. Editable arguments may be
   set (also when the agent left them out) but never removed;
2. the edited call is decided again by the policy in force: an edit the policy would deny or hide,
   or that another rule than the one holding the call would decide (say ``allow``, below an
   approval threshold), is refused with that rule's name.

An edit is always an approval by the editor: there is no "save the edits, let others decide" step,
so changed arguments are never pending without at least the editor's yes. The store then, in one
transaction holding the approval's row (`EditStore.approve_edited`), checks the call still has the
arguments the editor saw, binds the approval to the edited arguments (``arguments``,
``arguments_hash``; ``request_key`` stays the original call's so the agent's identical re-call
finds the outcome, and ``original_arguments`` keeps what the agent sent), deletes every earlier
vote (given for other arguments, they no longer count), writes an ``edited`` audit event with both
hashes and each change, and records the editor's yes as the first vote on the new arguments: a
single-approver rule approves at once, a quorum needs its other approvers on exactly what will run.
A plain yes racing an edit carries the arguments its voter saw, so it either lands before the edit
(and is discarded by it, or approves the original call and the edit is refused) or is refused.

Exception tree::

    ApprovalError (broker.approvals.ports)
    └── EditRefused        the edit is not allowed (field, type, policy); nothing changed
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from broker.approvals.audit import AuditEvent
from broker.approvals.canonical import arguments_hash, canonical_json
from broker.approvals.model import Approval, Vote
from broker.approvals.ports import ApprovalError, Cast
from broker.approvals.quorum import Tally
from broker.policy.decision import Action, Decision


class EditRefused(ApprovalError):
    pass


class _Missing:
    def __repr__(self) -> str:
        return "(not set)"


MISSING: Final = _Missing()


@dataclass(frozen=True, slots=True)
class Change:
    field: str
    old: Any
    """MISSING when the agent did not send this argument."""
    new: Any

    def text(self) -> str:
        """``quantity 500 -> 100``."""
        return f"{self.field} {_show(self.old)} -> {_show(self.new)}"

    def as_json(self) -> dict[str, Any]:
        item = {"field": self.field, "to": self.new}
        if self.old is not MISSING:
            item["from"] = self.old
        return item


@dataclass(frozen=True, slots=True)
class Edit:
    arguments: dict[str, Any]
    """The whole edited arguments, canonical (as the store will hand them back)."""
    arguments_hash: str
    changes: tuple[Change, ...]

    def audit_details(self, approval: Approval, *, via: str) -> dict[str, Any]:
        return {
            "via": via,
            "from_sha256": approval.arguments_hash,
            "to_sha256": self.arguments_hash,
            "changes": [change.as_json() for change in self.changes],
        }


def changes_text(changes: Collection[Change]) -> str:
    return ", ".join(change.text() for change in changes)


def recorded_changes(approval: Approval) -> tuple[Change, ...]:
    """What an approver changed, from an edited approval's two sets of arguments."""
    original = approval.original_arguments
    if original is None:
        return ()
    names = sorted(set(original) | set(approval.arguments))
    return tuple(
        Change(name, original.get(name, MISSING), approval.arguments.get(name, MISSING))
        for name in names
        if original.get(name, MISSING) != approval.arguments.get(name, MISSING)
    )


def editable_now(approval: Approval, current: Decision | None) -> tuple[str, ...]:
    """The approval's editable arguments that the rule in force (for its arguments) still lists."""
    if current is None or current.approval is None or current.action is not Action.REQUIRE_APPROVAL:
        return ()
    still = set(current.approval.editable)
    return tuple(name for name in approval.editable if name in still)


def apply_edits(
    approval: Approval,
    edits: object,
    *,
    editable: Collection[str],
    input_schema: Mapping[str, Any] | None,
) -> Edit:
    """The approval's arguments with `edits` applied; raises EditRefused naming the field at fault.
    An edit that changes nothing returns an Edit without changes (an approval as shown)."""
    if not isinstance(edits, Mapping) or not edits:
        raise EditRefused("edits must be a non-empty JSON object of argument name to new value")
    properties = _properties(input_schema)
    changed = dict(approval.arguments)
    changes: list[Change] = []
    for name, value in edits.items():
        if not isinstance(name, str):
            raise EditRefused(f"edits must name arguments by string, got {name!r}")
        if name not in editable:
            if not editable:
                raise EditRefused(
                    f"'{name}' cannot be changed: the rule {approval.rule} lets approvers change no argument"
                )
            raise EditRefused(
                f"'{name}' cannot be changed: the rule {approval.rule} lets approvers change only "
                f"{', '.join(editable)}"
            )
        if properties is not None:
            if name not in properties:
                raise EditRefused(
                    f"'{name}' is not an argument of the tool '{approval.upstream_tool}' "
                    f"(its arguments: {', '.join(sorted(properties)) or 'none'})"
                )
            problem = type_problem(value, properties[name])
            if problem is not None:
                raise EditRefused(f"'{name}': {problem}")
        try:
            canonical_json(value)
        except (TypeError, ValueError) as exc:
            raise EditRefused(f"'{name}': not a JSON value ({exc})") from None
        old = approval.arguments.get(name, MISSING)
        if old != value or type(old) is not type(value):
            changes.append(Change(name, old, value))
        changed[name] = value
    canonical = json.loads(canonical_json(changed))
    return Edit(canonical, arguments_hash(canonical), tuple(changes))


def prepare_edit(
    approval: Approval,
    edits: object,
    *,
    current: Decision | None,
    decide: Callable[[Mapping[str, Any]], Decision] | None,
    input_schema: Mapping[str, Any] | None,
) -> Edit:
    """Steps 1 and 2 of the module docstring: the checked Edit, or EditRefused. `current` is the
    policy's decision on the call as it stands, `decide` decides other arguments for the same call."""
    if decide is None:
        raise EditRefused("this broker has no policy to re-check an edited call against; approve it as shown")
    edit = apply_edits(approval, edits, editable=editable_now(approval, current), input_schema=input_schema)
    if edit.changes:
        refusal = redecide_refusal(approval, decide(edit.arguments))
        if refusal is not None:
            raise EditRefused(refusal)
    return edit


def redecide_refusal(approval: Approval, decision: Decision) -> str | None:
    """Why the policy in force refuses the edited call (`decision` is its verdict on it), or None."""
    if decision.action in (Action.DENY, Action.HIDE):
        verb = "denied" if decision.action is Action.DENY else "hidden"
        return (
            f"the edited call would be {verb} by rule {decision.rule} ({decision.reason}); "
            "nothing was changed or approved"
        )
    if decision.rule != approval.rule:
        return (
            f"the edited call would be decided by rule {decision.rule} ({decision.action.value}) instead "
            f"of {approval.rule}, which held it; nothing was changed or approved"
        )
    return None


_JSON_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "null": (type(None),),
}


def type_problem(value: object, schema: object) -> str | None:
    """Why `value` does not fit a property's JSON ``type``/``enum``, or None (unknown types pass)."""
    if not isinstance(schema, Mapping):
        return None
    declared = schema.get("type")
    names = [declared] if isinstance(declared, str) else declared if isinstance(declared, list) else []
    known = [name for name in names if isinstance(name, str) and name in _JSON_TYPES]
    if known and not any(_is(value, name) for name in known):
        return f"must be {' or '.join(known)}, got {_json_kind(value)} {_show(value)}"
    allowed = schema.get("enum")
    if isinstance(allowed, list) and value not in allowed:
        return f"must be one of {', '.join(_show(item) for item in allowed)}, got {_show(value)}"
    return None


def parse_text(text: str, schema: object, old: object = MISSING) -> object:
    """A value typed into a form, as JSON for its field: a string field keeps the text, a number
    field gets a number (``100``), anything else is read as JSON and falls back to the text."""
    declared = schema.get("type") if isinstance(schema, Mapping) else None
    if declared == "string" or (declared is None and isinstance(old, str)):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _is(value: object, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _JSON_TYPES[name])


def _json_kind(value: object) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is(value, name):
            return name
    return type(value).__name__


def _properties(input_schema: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if input_schema is None:
        return None
    properties = input_schema.get("properties")
    return properties if isinstance(properties, Mapping) else None


def _show(value: object) -> str:
    if value is MISSING:
        return "(not set)"
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


class EditStore(Protocol):
    """Binds an approval to edited arguments and records the editor's yes, in one transaction.

    Exception tree (broker.approvals.ports)::

        ApprovalNotFound      no approval has that id
        InvalidTransition     no longer pending (`.current` says who ended it); nothing changed
        └── ArgumentsChanged  the arguments are no longer those the editor saw; nothing changed
        StoreUnavailable      nothing changed; fail closed
    """

    async def approve_edited(
        self,
        approval_id: str,
        edit: Edit,
        vote: Vote,
        *,
        seen_hash: str,
        reason: str | None,
        edited: AuditEvent,
        voted: AuditEvent,
        tally: Callable[[Sequence[Vote]], Tally],
    ) -> Cast:
        """Holding the approval's row: refuse unless pending with `seen_hash`; store `edit` (keeping
        the first original arguments), delete every earlier vote, write `edited`, then record `vote`
        as `VoteStore.cast` does with `tally`."""
        ...


class EditListener(Protocol):
    """Hears every edit (metrics): outcome ``applied`` or ``refused``. Must not block."""

    def edit_made(self, approval: Approval, outcome: str) -> None: ...


__all__ = [
    "MISSING",
    "Change",
    "Edit",
    "EditListener",
    "EditRefused",
    "EditStore",
    "apply_edits",
    "changes_text",
    "editable_now",
    "parse_text",
    "recorded_changes",
    "redecide_refusal",
    "type_problem",
]
