"""How approvals read on the page: previews, pretty JSON, who ended a call, which statuses mean what.

Everything returned here is plain text; the templates escape it (autoescape is on and nothing
here is marked safe), because arguments, reasons and tool names all come from agents or
upstreams and may contain markup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jinja2

from broker.approvals import outcomes
from broker.approvals.idempotency import idempotency_ids
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.quorum import progress_text
from broker.channels.web.edit_form import editable_fields

PREVIEW_LENGTH = 96
COUNT_CAP = 1000
"""The inbox counts pending calls up to this many and then says "1,000+": an exact count of a
queue of 100,000 would read all of it on every page."""

HISTORY_STATUSES = (
    ApprovalStatus.APPROVED,
    ApprovalStatus.RELEASED,
    ApprovalStatus.COMPLETED,
    ApprovalStatus.FAILED,
    ApprovalStatus.DENIED,
    ApprovalStatus.EXPIRED,
    ApprovalStatus.CANCELLED,
    ApprovalStatus.OUTCOME_UNKNOWN,
)

_APPROVED_LINE = frozenset(
    {
        ApprovalStatus.APPROVED,
        ApprovalStatus.RELEASED,
        ApprovalStatus.COMPLETED,
        ApprovalStatus.FAILED,
        ApprovalStatus.OUTCOME_UNKNOWN,
    }
)
_LABELS = {ApprovalStatus.OUTCOME_UNKNOWN: outcomes.HEADLINE}


def iso(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat() if moment is not None else ""


def fallback_time(moment: datetime | None) -> str:
    """What a <time> element shows until the browser formats it in the viewer's zone (or without JS)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else ""


def argument_preview(arguments: Any, limit: int = PREVIEW_LENGTH) -> str:
    text = json.dumps(arguments, ensure_ascii=False, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def thousands(number: int) -> str:
    return f"{number:,}"


def count_label(count: int | None) -> str:
    if count is None:
        return ""
    return f"{COUNT_CAP:,}+" if count > COUNT_CAP else f"{count:,}"


def pretty_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


@dataclass(frozen=True, slots=True)
class Ending:
    """Who or what ended an approval, for 'already approved by bob via slack at ...'."""

    verb: str
    by: str | None
    via: str | None
    at: datetime | None
    reason: str | None

    @property
    def by_timeout(self) -> bool:
        return self.verb == "expired"


def ending(approval: Approval) -> Ending | None:
    if approval.status is ApprovalStatus.PENDING:
        return None
    verb = "approved" if approval.status in _APPROVED_LINE else approval.status.value
    return Ending(
        verb=verb,
        by=approval.decided_by,
        via=approval.decided_via,
        at=approval.decided_at,
        reason=approval.decision_reason,
    )


@dataclass(frozen=True, slots=True)
class Doubt:
    """An approved call that was sent and never answered: what the approver must check."""

    reason: str
    guidance: str
    ids: tuple[tuple[str, str], ...]


def doubt(approval: Approval) -> Doubt | None:
    if approval.status is not ApprovalStatus.OUTCOME_UNKNOWN:
        return None
    return Doubt(
        reason=outcomes.unknown_reason(approval),
        guidance=outcomes.guidance(approval),
        ids=tuple(idempotency_ids(approval.arguments)),
    )


def status_label(status: ApprovalStatus | str) -> str:
    """The words on a status badge: the status itself, except where it needs saying plainly."""
    value = ApprovalStatus(status)
    return _LABELS.get(value, value.value)


def status_tone(status: ApprovalStatus | str) -> str:
    """A CSS class: green for went-through, red for stopped or in doubt, amber for waiting, grey for the rest."""
    value = ApprovalStatus(status)
    if value in (ApprovalStatus.APPROVED, ApprovalStatus.RELEASED, ApprovalStatus.COMPLETED):
        return "good"
    if value in (ApprovalStatus.DENIED, ApprovalStatus.FAILED, ApprovalStatus.OUTCOME_UNKNOWN):
        return "bad"
    if value is ApprovalStatus.PENDING:
        return "waiting"
    return "muted"


def template_environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("broker.channels.web", "templates"),
        # Every template is HTML and every value may be hostile: escape all of it, always.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        iso=iso,
        fallback_time=fallback_time,
        preview=argument_preview,
        pretty=pretty_json,
        tone=status_tone,
        label=status_label,
        thousands=thousands,
        count_label=count_label,
    )
    environment.globals["doubt"] = doubt
    environment.globals["edit_fields"] = editable_fields
    environment.globals["quorum_progress"] = progress_text
    return environment
