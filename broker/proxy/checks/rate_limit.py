"""The rate-limit check: a rule's ``rate_limit`` counted per agent session and rule.

One `RateLimiter.hit` per call whose decision carries a rate limit (nothing for the others). Over
the limit, or with the shared counters unreachable (fail closed), the call ends with a
``Rate limit exceeded`` tool error recorded as ``rate_limited``. A grant never overrides it: the
gateway asks this before the grant check.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.observability.calls import CallCounts
from broker.proxy.call_results import rate_limited_result
from broker.proxy.checks import JsonObject, PendingCall
from broker.proxy.ratelimit import RateLimiter

Record = Callable[[PendingCall, str], str]
"""Records the call's decision with an outcome; returns the decision id."""


class RateLimitCheck:
    def __init__(self, limiter: RateLimiter, *, counts: CallCounts, record: Record) -> None:
        self._limiter = limiter
        self._counts = counts
        self._record = record

    async def check(self, call: PendingCall) -> JsonObject | None:
        limit = call.decision.rate_limit
        if limit is None:
            return None
        verdict = await self._limiter.hit(f"{call.session}\x00{call.decision.rule}", limit)
        if verdict.allowed:
            return None
        self._counts.rate_limited += 1
        decision_id = self._record(call, "rate_limited")
        return rate_limited_result(call.tool.exposed_name, call.decision, decision_id, verdict)
