"""Counters the proxy bumps on every tool call, at the cost of a few attribute increments.

These are plain integers and lists, not prometheus_client metrics: those take a lock and
look up label children on every update, which the per-call CPU budget cannot afford.
Only the event loop thread writes them; `broker.observability.metrics` reads them when
Prometheus scrapes, and a read of a Python int is never torn.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from itertools import pairwise

UPSTREAM_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds (seconds) of the upstream latency buckets; a last +Inf bucket is implied."""


class CallCounts:
    """Tool calls by what the policy did with them; each call is counted under exactly one action."""

    __slots__ = ("allow", "deny", "granted", "hide", "rate_limited", "require_approval", "spend_limited")

    def __init__(self) -> None:
        self.allow = 0
        self.deny = 0
        self.hide = 0
        self.require_approval = 0
        self.rate_limited = 0
        self.granted = 0
        """Held by the policy and let through by a time-boxed grant (broker/proxy/checks/grants.py)."""
        self.spend_limited = 0
        """Refused by a spend or count limit, or for an unusable amount (broker/proxy/checks/spend.py)."""

    def by_action(self) -> dict[str, int]:
        return {
            "allow": self.allow,
            "deny": self.deny,
            "hide": self.hide,
            "require_approval": self.require_approval,
            "rate_limited": self.rate_limited,
            "granted": self.granted,
            "spend_limited": self.spend_limited,
        }


class LatencyHistogram:
    """Observations counted into fixed buckets (Prometheus semantics: a bucket holds values <= its bound)."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float] = UPSTREAM_LATENCY_BUCKETS) -> None:
        ordered = tuple(float(bound) for bound in bounds)
        if not ordered or any(later <= earlier for earlier, later in pairwise(ordered)):
            raise ValueError(f"bucket bounds must be a non-empty increasing sequence, got {bounds!r}")
        self.bounds = ordered
        self.counts = [0] * (len(ordered) + 1)
        """Per bucket, not cumulative; the last one is +Inf."""
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs ending with +Inf, as Prometheus exposes them."""
        rows: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            rows.append((_float_text(bound), float(running)))
        rows.append(("+Inf", float(running + self.counts[-1])))
        return rows


class UpstreamLatency:
    """One latency histogram per upstream server, created on its first call."""

    __slots__ = ("_bounds", "_by_server")

    def __init__(self, bounds: Sequence[float] = UPSTREAM_LATENCY_BUCKETS) -> None:
        self._bounds = tuple(bounds)
        LatencyHistogram(self._bounds)  # refuse bad bounds now, not on the first call
        self._by_server: dict[str, LatencyHistogram] = {}

    def observe(self, server: str, seconds: float) -> None:
        histogram = self._by_server.get(server)
        if histogram is None:
            histogram = self._by_server[server] = LatencyHistogram(self._bounds)
        histogram.observe(seconds)

    def servers(self) -> dict[str, LatencyHistogram]:
        return dict(self._by_server)


def _float_text(value: float) -> str:
    # Prometheus' own clients render bucket bounds like Go's strconv: 1.0 -> "1.0", 0.005 -> "0.005".
    return repr(float(value))
