"""One structured log line per policy decision."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from broker.policy.decision import Decision
from broker.proxy import exact_json

DECISION_LOGGER = "broker.decisions"


def arguments_digest(arguments: Mapping[str, Any] | None) -> str:
    """SHA-256 of the arguments' canonical JSON: sorted keys, no whitespace, integers exact."""
    return hashlib.sha256(exact_json.dumps(arguments or {}, sort_keys=True)).hexdigest()


def counter_ids(prefix: str | None = None) -> Callable[[], str]:
    """Unique, cheap decision ids: a random per-process prefix plus a counter."""
    base = prefix if prefix is not None else os.urandom(4).hex()
    counter = itertools.count(1)
    return lambda: f"{base}-{next(counter)}"


class DecisionLog:
    def __init__(
        self, *, next_id: Callable[[], str] | None = None, logger: logging.Logger | None = None
    ) -> None:
        self._next_id = next_id or counter_ids()
        self._logger = logger or logging.getLogger(DECISION_LOGGER)

    def record(
        self,
        decision: Decision,
        *,
        agent: str,
        session: str,
        tool: str,
        server: str,
        arguments: Mapping[str, Any] | None,
        outcome: str | None = None,
    ) -> str:
        decision_id = self._next_id()
        if self._logger.isEnabledFor(logging.INFO):
            line: dict[str, Any] = {
                "event": "decision",
                "decision_id": decision_id,
                "agent": agent,
                "session": session,
                "tool": tool,
                "server": server,
                "args_sha256": arguments_digest(arguments),
                "action": decision.action.value,
                "rule": decision.rule,
                "policy_revision": decision.revision,
            }
            if outcome is not None:
                line["outcome"] = outcome
            self._logger.info(orjson.dumps(line).decode())
        return decision_id
