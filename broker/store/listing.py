"""Listing approvals: the WHERE and ORDER BY of `ApprovalStore.list`, shaped for the indexes.

Every listing is newest first (or oldest first) by `(created_at, id)` with a LIMIT, so each
filter has an index that delivers rows already in that order and the database stops after
`limit` of them instead of sorting the whole queue (migration 0005):

- one status (the inbox, the API's `status=pending`): `(status, created_at, id)`, and with an
  agent or a tool `(status, agent, created_at, id)` / `(status, tool, created_at, id)`;
- every status but pending (the history): the partial index `(created_at, id) WHERE status <>
  'pending'`. SQLite uses a partial index only when the query repeats its condition word for
  word, so a listing that excludes pending says `status <> 'pending'` explicitly.

`search` is a case-insensitive substring of the tool or the agent, or an approval id exactly.
A substring cannot use an index, so a search first finds the tool and agent names that contain
it, walking the distinct names of each status asked for through the `(status, tool)` and
`(status, agent)` indexes (a loose index scan: one index probe per distinct name, not per row),
then lists each matching name's newest `limit` rows per status through its own index and keeps
the newest `limit` of those (`_merged`; an agent or a tool filter over several statuses, as in
the history, is merged the same way). A term matching no name costs the name walk; one matching many names (more
than `MAX_SEARCH_NAMES`) walks the ordered queue instead, where matches are then frequent.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_, select, text, union_all
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.approvals.clock import require_utc
from broker.approvals.model import ApprovalStatus
from broker.approvals.ports import InvalidValue, ListPosition
from broker.store.tables import approvals

MAX_SEARCH_LENGTH = 200
MAX_SEARCH_NAMES = 16
_NAME_COLUMNS = ("tool", "agent")


def listing_query(
    *,
    statuses: Collection[ApprovalStatus] | None,
    agent: str | None,
    tool: str | None,
    matches: ColumnElement[bool] | None,
    limit: int,
    before: datetime | None,
    after: ListPosition | None,
    with_task: bool,
    oldest_first: bool,
    keys_only: bool = False,
) -> Select[tuple[object, ...]] | None:
    """The SELECT for one page, or None when nothing can match (an empty status set)."""
    conditions: list[ColumnElement[bool]] = []
    if statuses is not None:
        wanted = sorted({ApprovalStatus(status).value for status in statuses})
        if not wanted:
            return None
        conditions.append(approvals.c.status.in_(wanted))
        if ApprovalStatus.PENDING.value not in wanted and len(wanted) > 1:
            conditions.append(approvals.c.status != ApprovalStatus.PENDING.value)
    if agent is not None:
        conditions.append(approvals.c.agent == agent)
    if tool is not None:
        conditions.append(approvals.c.tool == tool)
    if matches is not None:
        conditions.append(matches)
    if before is not None:
        conditions.append(approvals.c.created_at < require_utc(before, field="before"))
    if after is not None:
        conditions.append(_past(after, oldest_first=oldest_first))
    if with_task:
        conditions.append(approvals.c.task_id.is_not(None))
    columns = (approvals.c.id, approvals.c.created_at) if keys_only else (approvals,)
    query = select(*columns).where(*conditions)
    if oldest_first:
        query = query.order_by(approvals.c.created_at, approvals.c.id)
    else:
        query = query.order_by(approvals.c.created_at.desc(), approvals.c.id.desc())
    return query.limit(limit)


async def list_rows(
    conn: AsyncConnection,
    *,
    statuses: Collection[ApprovalStatus] | None,
    agent: str | None,
    tool: str | None,
    search: str | None,
    limit: int,
    before: datetime | None,
    after: ListPosition | None,
    with_task: bool,
    oldest_first: bool,
) -> Sequence[RowMapping]:
    wanted = sorted({ApprovalStatus(s).value for s in statuses} if statuses is not None else _ALL)
    filters: dict[str, Any] = {
        "agent": agent,
        "tool": tool,
        "before": before,
        "after": after,
        "with_task": with_task,
        "oldest_first": oldest_first,
    }
    if not search:
        if (agent is None and tool is None) or len(wanted) <= 1:
            query = listing_query(statuses=statuses, matches=None, limit=limit, **filters)
            return [] if query is None else (await conn.execute(query)).mappings().all()
        return await _merged(conn, wanted, [None], limit, filters)
    if len(search) > MAX_SEARCH_LENGTH:
        raise InvalidValue(f"a search term may be at most {MAX_SEARCH_LENGTH} characters")
    folded = search.lower()
    names: dict[str, list[str]] = {}
    for column, present in (await _distinct_names(conn, wanted)).items():
        names[column] = sorted(name for name in present if folded in name.lower())
    by_id = approvals.c.id == search
    if sum(len(found) for found in names.values()) > MAX_SEARCH_NAMES:
        matches = or_(by_id, *(approvals.c[column].in_(found) for column, found in names.items() if found))
        query = listing_query(statuses=statuses, matches=matches, limit=limit, **filters)
        return [] if query is None else (await conn.execute(query)).mappings().all()
    each: list[ColumnElement[bool] | None] = [by_id]
    each += [approvals.c[column] == name for column, found in names.items() for name in found]
    return await _merged(conn, wanted, each, limit, filters)


async def _merged(
    conn: AsyncConnection,
    statuses: Sequence[str],
    each: Sequence[ColumnElement[bool] | None],
    limit: int,
    filters: dict[str, Any],
) -> Sequence[RowMapping]:
    """One indexed walk per (status, condition), each stopping at `limit`, merged: the newest
    `limit` keys of all of them, then those rows. Used where one query would need a sort or a
    scan: several statuses with an agent or a tool, and searches."""
    keys = []
    for status in statuses:
        for matches in each:
            branch = listing_query(
                statuses={ApprovalStatus(status)}, matches=matches, limit=limit, keys_only=True, **filters
            )
            if branch is not None:
                keys.append(branch.subquery().select())
    if not keys:
        return []
    merged = union_all(*keys).subquery()
    if filters["oldest_first"]:
        order = (merged.c.created_at.asc(), merged.c.id.asc())
    else:
        order = (merged.c.created_at.desc(), merged.c.id.desc())
    # DISTINCT: an id found by two branches (its agent and its tool both match) counts once.
    newest = select(merged.c.id, merged.c.created_at).distinct().order_by(*order).limit(limit)
    chosen = [row.id for row in (await conn.execute(newest)).all()]
    if not chosen:
        return []
    query = select(approvals).where(approvals.c.id.in_(chosen))
    rows = {row["id"]: row for row in (await conn.execute(query)).mappings().all()}
    return [rows[approval_id] for approval_id in chosen if approval_id in rows]


_ALL = tuple(status.value for status in ApprovalStatus)


async def _distinct_names(conn: AsyncConnection, statuses: Sequence[str]) -> dict[str, set[str]]:
    """Every distinct tool and agent among rows with these statuses, in one statement: a walk
    per (column, status) that probes the `(status, column)` index once per distinct value."""
    seeds = " UNION ALL ".join(f"SELECT CAST(:s{n} AS VARCHAR(16)) AS status" for n in range(len(statuses)))
    walks = ", ".join(
        f"{column}_names(status, name) AS ("
        f" SELECT s.status, (SELECT MIN({column}) FROM approvals WHERE status = s.status) FROM ({seeds}) AS s"
        f" UNION ALL"
        f" SELECT n.status, (SELECT MIN({column}) FROM approvals WHERE status = n.status AND {column} > n.name)"
        f" FROM {column}_names AS n WHERE n.name IS NOT NULL)"
        for column in _NAME_COLUMNS
    )
    picks = " UNION ALL ".join(
        f"SELECT '{column}' AS kind, name FROM {column}_names WHERE name IS NOT NULL"
        for column in _NAME_COLUMNS
    )
    walk = text(f"WITH RECURSIVE {walks} {picks}")
    found: dict[str, set[str]] = {column: set() for column in _NAME_COLUMNS}
    params = {f"s{n}": status for n, status in enumerate(statuses)}
    for kind, name in (await conn.execute(walk, params)).all():
        found[str(kind)].add(str(name))
    return found


def _past(after: ListPosition, *, oldest_first: bool) -> ColumnElement[bool]:
    if "\x00" in after.approval_id:
        raise InvalidValue("a listing position's approval id cannot hold a NUL character")
    last_time = require_utc(after.created_at, field="after")
    # The outer bound on created_at alone lets the database seek the index to the page's start;
    # without it the OR reads every row before it.
    if oldest_first:
        return and_(
            approvals.c.created_at >= last_time,
            or_(approvals.c.created_at > last_time, approvals.c.id > after.approval_id),
        )
    return and_(
        approvals.c.created_at <= last_time,
        or_(approvals.c.created_at < last_time, approvals.c.id < after.approval_id),
    )
