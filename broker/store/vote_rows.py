"""How an approval row carries its votes (the ``approvals.votes`` JSON column)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from broker.approvals.clock import require_utc
from broker.approvals.model import Vote


def votes_json(votes: Iterable[Vote]) -> list[dict[str, Any]]:
    return [
        {"approver": vote.approver, "groups": sorted(vote.groups), "via": vote.via, "at": vote.at.isoformat()}
        for vote in votes
    ]


def votes_from_json(raw: list[dict[str, Any]]) -> tuple[Vote, ...]:
    return tuple(
        Vote(
            approver=item["approver"],
            groups=frozenset(item["groups"]),
            via=item["via"],
            at=require_utc(datetime.fromisoformat(item["at"]), field="vote time"),
        )
        for item in raw
    )
