"""The inbox's and the history's query string: filters, search and paging, read once and checked.

`?status=` (history only), `?agent=` and `?tool=` match exactly; `?q=` is a search (a
substring of the tool or the agent, ignoring case, or an approval id: see
broker/store/listing.py); `?before=` is an ISO 8601 time with a zone; `?after=` is the cursor
of the previous page. Anything wrong comes back as `problems`, shown above an empty list, never
as a crash.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlencode

from broker.approvals.clock import require_utc
from broker.approvals.model import ApprovalStatus
from broker.approvals.ports import ListPosition
from broker.store.listing import MAX_SEARCH_LENGTH

MAX_NAME_LENGTH = 200
_KEPT = ("status", "agent", "tool", "q")


@dataclass(frozen=True, slots=True)
class ListFilters:
    status: str = ""
    agent: str = ""
    tool: str = ""
    q: str = ""
    before_text: str = ""
    before: datetime | None = None
    after: ListPosition | None = None
    problems: tuple[str, ...] = field(default=())

    @property
    def active(self) -> bool:
        return any((self.status, self.agent, self.tool, self.q, self.before_text))

    @property
    def paged(self) -> bool:
        return self.before is not None or self.after is not None

    def statuses(self, allowed: Collection[ApprovalStatus]) -> set[ApprovalStatus]:
        return {ApprovalStatus(self.status)} if self.status else set(allowed)

    def query(self, **extra: str) -> str:
        """The filters (not the page) as a query string, plus `extra`; "" when there is nothing."""
        values = {name: getattr(self, name) for name in _KEPT if getattr(self, name)}
        values.update({name: value for name, value in extra.items() if value})
        return urlencode(values)

    def link(self, path: str, **extra: str) -> str:
        query = self.query(**extra)
        return f"{path}?{query}" if query else path


def read_filters(params: Mapping[str, str], *, statuses: Collection[ApprovalStatus] = ()) -> ListFilters:
    """`statuses` are the ones `?status=` may name; empty means the parameter is not offered."""
    problems = []
    status = params.get("status", "").strip() if statuses else ""
    if status and status not in {value.value for value in statuses}:
        problems.append(f"unknown status {status!r}")
    names = {}
    for name, limit in (("agent", MAX_NAME_LENGTH), ("tool", MAX_NAME_LENGTH), ("q", MAX_SEARCH_LENGTH)):
        value = params.get(name, "").strip()
        if len(value) > limit or "\x00" in value:
            problems.append(f"'{name}' must be at most {limit} printable characters")
            value = ""
        names[name] = value
    before_text = params.get("before", "").strip()
    before = None
    if before_text:
        before = _parse_moment(before_text)
        if before is None:
            problems.append(f"'before' must be an ISO 8601 time with a zone, got {before_text[:80]!r}")
    after = None
    after_text = params.get("after", "").strip()
    if after_text:
        try:
            after = ListPosition.from_token(after_text)
        except ValueError as exc:
            problems.append(f"'after': {exc}")
    return ListFilters(
        status=status if not problems or status in {value.value for value in statuses} else "",
        before_text=before_text,
        before=before,
        after=after,
        problems=tuple(problems),
        **names,
    )


def _parse_moment(text: str) -> datetime | None:
    try:
        return require_utc(
            datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+")), field="before"
        )
    except ValueError:
        return None
