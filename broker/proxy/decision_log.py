"""One structured log line per policy decision.

Every allowed call writes one, so the line must cost microseconds: `BufferedLineSink` gathers
lines and writes them in one system call at most every 50 ms (and whenever 64 KiB pile up),
instead of the logging module's formatting, locking and flush per record. `LoggingSink` hands
lines to the ``broker.decisions`` logger for embedders who route logs themselves.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, Protocol

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


class DecisionSink(Protocol):
    def write(self, line: bytes) -> None:
        """Takes one JSON line (without its newline)."""
        ...

    def flush(self) -> None: ...


class LoggingSink:
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(DECISION_LOGGER)

    def write(self, line: bytes) -> None:
        self._logger.info(line.decode())

    def flush(self) -> None:
        pass


class BufferedLineSink:
    """Lines to a binary stream, written together: at most `delay` seconds late, or once
    `max_buffered` bytes are waiting. `flush` before the process exits."""

    def __init__(self, stream: BinaryIO, *, delay: float = 0.05, max_buffered: int = 64 * 1024) -> None:
        self._stream = stream
        self._delay = delay
        self._max_buffered = max_buffered
        self._buffer = bytearray()
        self._scheduled: asyncio.TimerHandle | None = None

    def write(self, line: bytes) -> None:
        self._buffer += line
        self._buffer += b"\n"
        if len(self._buffer) >= self._max_buffered:
            self.flush()
        elif self._scheduled is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()  # no loop to come back later: write now
                return
            self._scheduled = loop.call_later(self._delay, self.flush)

    def flush(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._buffer:
            self._stream.write(self._buffer)
            self._stream.flush()
            self._buffer.clear()


class DecisionLog:
    def __init__(self, *, next_id: Callable[[], str] | None = None, sink: DecisionSink | None = None) -> None:
        self._next_id = next_id or counter_ids()
        self.sink = sink or LoggingSink()

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
        grant: str | None = None,
    ) -> str:
        decision_id = self._next_id()
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
        if grant is not None:
            line["grant"] = grant  # the time-boxed grant that let a held call through
        self.sink.write(orjson.dumps(line))
        return decision_id
