"""Decision lines: one JSON object per decision, written in batches that are never lost on flush."""

from __future__ import annotations

import io
import json

import pytest

from broker.policy.decision import Action, Decision
from broker.proxy.decision_log import BufferedLineSink, DecisionLog

DECISION = Decision(Action.ALLOW, "rules[0] 'get_*'", "allowed by rule", "abcdef012345")


def record(log: DecisionLog, arguments: dict[str, object]) -> str:
    return log.record(
        DECISION, agent="bot", session="s-1", tool="get_ticker", server="exchange", arguments=arguments
    )


def test_lines_wait_in_the_buffer_until_a_flush_or_until_it_is_full() -> None:
    stream = io.BytesIO()
    sink = BufferedLineSink(stream, max_buffered=300)
    log = DecisionLog(sink=sink, next_id=iter(["d-1", "d-2", "d-3"]).__next__)

    assert record(log, {"symbol": "BTCUSD"}) == "d-1"  # no event loop: written at once
    assert len(stream.getvalue().splitlines()) == 1

    line = json.loads(stream.getvalue().splitlines()[0])
    assert line == {
        "event": "decision",
        "decision_id": "d-1",
        "agent": "bot",
        "session": "s-1",
        "tool": "get_ticker",
        "server": "exchange",
        "args_sha256": line["args_sha256"],
        "action": "allow",
        "rule": "rules[0] 'get_*'",
        "policy_revision": "abcdef012345",
    }
    assert len(line["args_sha256"]) == 64


@pytest.mark.anyio
async def test_on_the_event_loop_lines_are_batched_and_flushed_together() -> None:
    stream = io.BytesIO()
    sink = BufferedLineSink(stream, delay=3600, max_buffered=10_000)
    log = DecisionLog(sink=sink)
    for _ in range(3):
        record(log, {"symbol": "BTCUSD"})
    assert stream.getvalue() == b""  # one write later, not three now
    sink.flush()
    assert len(stream.getvalue().splitlines()) == 3
    for _ in range(200):
        record(log, {"padding": "x" * 100})
    assert len(stream.getvalue().splitlines()) > 3  # a full buffer is written at once
    sink.flush()
    assert len(stream.getvalue().splitlines()) == 203
