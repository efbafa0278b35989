"""Sliding-window rate limits, counted per agent session and rule."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from broker.policy.decision import RateLimit

UNAVAILABLE_RETRY_AFTER = 1.0


@dataclass(frozen=True, slots=True)
class RateVerdict:
    allowed: bool
    retry_after: float = 0.0
    """Seconds until the oldest counted call leaves the window (0 when allowed)."""
    unavailable: str | None = None
    """Why the call could not be counted (the shared counters are unreachable); refused then."""

    @classmethod
    def uncounted(cls, why: str) -> RateVerdict:
        """Fail closed: a call that cannot be counted is refused, and the agent told why."""
        return cls(False, UNAVAILABLE_RETRY_AFTER, why)


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: RateLimit) -> RateVerdict: ...


class SlidingWindowLimiter:
    """An exact sliding log: a call is allowed when fewer than `max_calls` calls fall in the last window.

    A log rather than fixed buckets, so an agent can never burst 2x the quota across a
    bucket edge. Memory is bounded by `max_calls` per key, and idle keys are pruned.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._logs: dict[str, deque[float]] = {}
        self._longest_window = 0.0

    async def hit(self, key: str, limit: RateLimit) -> RateVerdict:
        now = self._clock()
        log = self._logs.get(key)
        if log is None:
            self._longest_window = max(self._longest_window, limit.window_seconds)
            if len(self._logs) >= self._max_keys:
                self._prune(now)
            log = self._logs[key] = deque()
        horizon = now - limit.window_seconds
        while log and log[0] <= horizon:
            log.popleft()
        if len(log) >= limit.max_calls:
            retry_after = log[len(log) - limit.max_calls] - horizon
            return RateVerdict(False, math.ceil(retry_after * 1000) / 1000)
        log.append(now)
        return RateVerdict(True)

    def _prune(self, now: float) -> None:
        horizon = now - self._longest_window
        stale = [key for key, log in self._logs.items() if not log or log[-1] <= horizon]
        for key in stale:
            del self._logs[key]
        if len(self._logs) >= self._max_keys:
            # Every key is active: forgetting the oldest is safer than refusing to track new sessions.
            for key in list(self._logs)[: len(self._logs) // 10 or 1]:
                del self._logs[key]
