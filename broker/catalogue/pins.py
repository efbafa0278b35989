"""Pinned tool definitions: what an operator accepted a tool to be, so a changed tool cannot
quietly ride on an old allow rule.

A tool's *definition hash* is the SHA-256 of the canonical JSON (broker.approvals.canonical)
of its ``name``, ``description``, ``inputSchema`` and ``annotations`` as the upstream lists
them (absent fields count as null; ``title``, ``outputSchema``, ``_meta`` and the like do not
count: they do not change what a call does or what the model is told it does).

One `Pin` per (server, tool), in the store shared by every replica:

* ``seen_hash`` is the definition the upstream offers now (the last one any replica saw);
* ``accepted_hash`` is the one an operator accepted (``broker tools accept``), or None;
* ``first_seen_at``, ``accepted_by``/``accepted_at`` say when and who.

A tool is *pending* when ``seen_hash != accepted_hash``. First sighting is trust on first
use by default: the new pin is accepted at once, by ``first-use``; with ``trust_new=False``
(strict pinning, the policy's ``on_new_tool``) a new tool is pending until someone accepts it. A later change of the
definition never accepts itself: the pin's ``seen_hash`` moves and the tool is pending.

Port (implemented by broker.store.tool_pins), failures as in broker.approvals.ports:
StoreUnavailable when the store cannot answer, which callers treat as every tool pending
(fail closed); PinNotFound when accepting a tool no replica has seen; DefinitionMoved when
accepting a hash that is not the definition offered now. Every sighting of a new tool, change
and acceptance is also a `ToolEvent` (broker.catalogue.tool_events).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from broker.approvals.canonical import canonical_bytes
from broker.catalogue.tool_events import ToolEvent

PINNED_FIELDS: Final = ("name", "description", "inputSchema", "annotations")
FIRST_USE: Final = "first-use"
"""`Pin.accepted_by` of a pin accepted on first sighting (trust on first use)."""


def definition_hash(definition: Mapping[str, Any]) -> str:
    """The hex SHA-256 of the pinned fields of a ``tools/list`` entry; ValueError if not JSON-exact."""
    return hashlib.sha256(
        canonical_bytes({field: definition.get(field) for field in PINNED_FIELDS})
    ).hexdigest()


@dataclass(frozen=True, slots=True)
class Pin:
    server: str
    tool: str
    seen_hash: str
    accepted_hash: str | None
    first_seen_at: datetime
    seen_at: datetime
    accepted_by: str | None
    accepted_at: datetime | None

    @property
    def pending(self) -> bool:
        """True when the definition offered now is not the one accepted."""
        return self.seen_hash != self.accepted_hash


@dataclass(frozen=True, slots=True)
class Sighting:
    """What `PinStore.observe` found: the pin after the sighting, and what it was before (None: new)."""

    pin: Pin
    before: Pin | None

    @property
    def changed(self) -> bool:
        """The definition differs from the one this pin last saw (never true for a new tool)."""
        return self.before is not None and self.before.seen_hash != self.pin.seen_hash


class PinNotFound(LookupError):
    def __init__(self, server: str | None, tool: str) -> None:
        where = f" on server '{server}'" if server else ""
        super().__init__(f"no tool '{tool}'{where} has been seen: nothing to accept")
        self.server = server
        self.tool = tool


class DefinitionMoved(ValueError):
    """The definition offered now is not the one the operator reviewed (``accept --hash``)."""

    def __init__(self, server: str, tool: str, expected: str, seen: str) -> None:
        super().__init__(
            f"{server}__{tool} now offers definition {seen[:12]}, not {expected[:12]} that you reviewed: "
            "nothing accepted; review it again (`broker tools events`) and accept that hash"
        )
        self.server = server
        self.tool = tool
        self.expected = expected
        self.seen = seen


class PinStore(Protocol):
    async def observe(
        self,
        server: str,
        tool: str,
        seen_hash: str,
        *,
        now: datetime,
        trust_new: bool,
        definition: Mapping[str, Any] | None = None,
    ) -> Sighting:
        """Records that `server` offers `tool` with this definition now (idempotent), and the
        `ToolEvent`s of a first sighting or a change (`definition`, when given, for the diff)."""
        ...

    async def accept(
        self, tool: str, *, server: str | None, by: str, at: datetime, expected_hash: str | None = None
    ) -> Sequence[Pin]:
        """Accepts the definition each matching pin saw last; raises PinNotFound when none matches,
        DefinitionMoved (nothing accepted) when `expected_hash` (a prefix) is not what one saw last."""
        ...

    async def accept_all(self, *, by: str, at: datetime) -> Sequence[Pin]:
        """Accepts every pending pin; returns those it accepted."""
        ...

    async def pins(self) -> Sequence[Pin]:
        """Every pin, by server then tool."""
        ...

    async def events(
        self, *, tool: str | None = None, server: str | None = None, limit: int = 100
    ) -> Sequence[ToolEvent]:
        """The newest `limit` tool-definition events (broker.catalogue.tool_events), oldest first."""
        ...

    async def prune_events(self, *, before: datetime, limit: int) -> int:
        """Deletes up to `limit` events older than `before`, never the last acceptance of a tool,
        the events after it (pending changes) nor its last sighting; returns how many went."""
        ...
