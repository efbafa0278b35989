"""The history as a file: `/history.csv` and `/history.json`, with the history page's filters.

The export streams: it reads the store a page of `EXPORT_PAGE` rows at a time (keyset paging,
so each page is one indexed query) and writes each page before reading the next, so neither
the broker nor the database holds the whole history at once. The first page is read before
the response starts, so an unreachable store is a 503, not an empty file. If the store goes
away half-way, the file ends early and the broker logs it: a CSV cannot carry an error, so the
JSON form ends with `"complete": false` for that case.

CSV cells that a spreadsheet would run as a formula (starting with = + - @, a tab or a carriage
return) are prefixed with an apostrophe: agent names, tools and reasons come from others.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Collection
from datetime import UTC, datetime
from typing import Any

from starlette.responses import StreamingResponse

from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.ports import ApprovalStore, ListPosition, StoreUnavailable
from broker.channels.web.filters import ListFilters

logger = logging.getLogger(__name__)

EXPORT_PAGE = 500
COLUMNS = (
    "id",
    "created_at",
    "status",
    "agent",
    "server",
    "tool",
    "arguments_sha256",
    "rule",
    "decided_by",
    "decided_via",
    "decided_at",
    "decision_reason",
    "completed_at",
)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def export_record(approval: Approval) -> dict[str, str | None]:
    return {
        "id": approval.id,
        "created_at": _iso(approval.created_at),
        "status": approval.status.value,
        "agent": approval.agent,
        "server": approval.server,
        "tool": approval.tool,
        "arguments_sha256": approval.arguments_hash,
        "rule": approval.rule,
        "decided_by": approval.decided_by,
        "decided_via": approval.decided_via,
        "decided_at": _iso(approval.decided_at),
        "decision_reason": approval.decision_reason,
        "completed_at": _iso(approval.completed_at),
    }


def safe_cell(value: str | None) -> str:
    """A cell a spreadsheet shows as text, never evaluates."""
    if value is None:
        return ""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


class HistoryExport:
    def __init__(
        self, store: ApprovalStore, statuses: Collection[ApprovalStatus], *, page: int = EXPORT_PAGE
    ) -> None:
        self._store = store
        self._statuses = statuses
        self._size = page

    async def _page(self, filters: ListFilters, after: ListPosition | None) -> list[Approval]:
        return await self._store.list(
            statuses=filters.statuses(self._statuses),
            agent=filters.agent or None,
            tool=filters.tool or None,
            search=filters.q or None,
            before=filters.before,
            after=after,
            limit=self._size,
        )

    async def response(self, filters: ListFilters, kind: str) -> StreamingResponse:
        """Raises StoreUnavailable when even the first page cannot be read."""
        first = await self._page(filters, filters.after)
        if kind == "csv":
            body, media = self._csv(filters, first), "text/csv; charset=utf-8"
        else:
            body, media = self._json(filters, first), "application/json"
        return StreamingResponse(
            body,
            media_type=media,
            headers={
                "Content-Disposition": f'attachment; filename="approvals-history.{kind}"',
                "Cache-Control": "no-store",
            },
        )

    async def _pages(
        self, filters: ListFilters, first: list[Approval], ended: Callable[[], None]
    ) -> AsyncIterator[list[Approval]]:
        page = first
        while page:
            yield page
            if len(page) < self._size:
                return
            try:
                page = await self._page(filters, ListPosition.of(page[-1]))
            except StoreUnavailable as exc:
                logger.warning("history export cut short: approval store unavailable: %s", exc)
                ended()
                return

    async def _csv(self, filters: ListFilters, first: list[Approval]) -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        async for page in self._pages(filters, first, lambda: None):
            for approval in page:
                record = export_record(approval)
                writer.writerow([safe_cell(record[column]) for column in COLUMNS])
            yield _drain(buffer)
        yield _drain(buffer)

    async def _json(self, filters: ListFilters, first: list[Approval]) -> AsyncIterator[str]:
        cut: list[bool] = []
        separator = ""
        yield '{"approvals": ['
        async for page in self._pages(filters, first, lambda: cut.append(True)):
            chunk: list[str] = []
            for approval in page:
                chunk.append(separator + json.dumps(export_record(approval), ensure_ascii=False))
                separator = ",\n"
            yield "".join(chunk)
        complete: dict[str, Any] = {"complete": not cut}
        yield "],\n" + json.dumps(complete)[1:]


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text
