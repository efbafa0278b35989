"""The Prometheus exposition of one broker replica.

Hot-path numbers (calls by policy action, upstream latency) are read from the plain counters
in `broker.observability.calls` at scrape time. Approval numbers come from the approval
service, which calls listeners only in the process whose transition won the store's
compare-and-set: every decision is counted once across all replicas, so counters sum.
The pending queue is shared by all replicas; every replica reports the whole queue (take
`max`, not `sum`, across replicas).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from broker.approvals.escalation import Escalated
from broker.approvals.grants import Grant
from broker.approvals.model import Approval, ApprovalStatus
from broker.approvals.ports import StoreUnavailable
from broker.observability.calls import CallCounts, UpstreamLatency

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DECISION_LATENCY_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 14400, 86400)
"""Seconds from a call being held to its decision: humans answer in seconds to hours."""

_DECISION_OUTCOMES = {
    ApprovalStatus.APPROVED: "approved",
    ApprovalStatus.DENIED: "denied",
    ApprovalStatus.EXPIRED: "expired",
    ApprovalStatus.CANCELLED: "cancelled",
}
_RELEASE_OUTCOMES = {
    ApprovalStatus.COMPLETED: "completed",
    ApprovalStatus.FAILED: "failed",
    ApprovalStatus.OUTCOME_UNKNOWN: "outcome_unknown",
}


class BrokerMetrics:
    """Owns a private registry (several brokers in one process never collide) and listens to approvals."""

    def __init__(
        self,
        *,
        calls: CallCounts,
        upstream_latency: UpstreamLatency,
        pending_count: Callable[[], Awaitable[int]],
        held_calls: Callable[[], int],
    ) -> None:
        self.registry = CollectorRegistry()
        self._pending_count = pending_count
        self._opened = Counter(
            "broker_approvals_opened",
            "Calls this replica held for human approval (a repeated identical call attaches and is not counted)",
            registry=self.registry,
        )
        self._decisions = Counter(
            "broker_approval_decisions",
            "Approvals decided, by outcome and by channel (timeout for expiries, agent for cancellations)",
            ["outcome", "via"],
            registry=self.registry,
        )
        self._decision_seconds = Histogram(
            "broker_approval_decision_seconds",
            "Seconds from a call being held to its decision (decided_at - created_at)",
            ["outcome"],
            buckets=DECISION_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._releases = Counter(
            "broker_approval_releases",
            "Approved calls this replica forwarded to the upstream, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self._votes = Counter(
            "broker_approval_votes",
            "Votes on quorum approvals made on this replica: counted, repeat (the person had voted "
            "already and counts once), decisive (reached the quorum), deny, refused",
            ["outcome"],
            registry=self.registry,
        )
        self._escalations = Counter(
            "broker_approval_escalations",
            "Escalation steps reached by approvals nobody decided in time, by step number (each step "
            "is taken by exactly one replica, so counters sum)",
            ["step"],
            registry=self.registry,
        )
        self._edits = Counter(
            "broker_approval_edits",
            "Approvals with edited arguments made on this replica: applied (bound to the new arguments, "
            "with the editor's yes), refused (a field not editable, a wrong type, or a policy refusal)",
            ["outcome"],
            registry=self.registry,
        )
        self._pending = Gauge(
            "broker_approvals_pending",
            "Approvals waiting for a human in the shared store (the same queue on every replica: use max)",
            registry=self.registry,
        )
        self._store_up = Gauge(
            "broker_store_up",
            "1 when this scrape could read the approval store, else 0 (the broker then forwards nothing)",
            registry=self.registry,
        )
        self._grant_events = {"created": 0, "revoked": 0}
        self.registry.register(_CallCollector(calls, upstream_latency, held_calls, self._grant_events))

    # -- ApprovalListener -------------------------------------------------------------------------

    async def approval_opened(self, approval: Approval) -> None:
        self._opened.inc()

    async def approval_updated(self, approval: Approval) -> None:
        outcome = _DECISION_OUTCOMES.get(approval.status)
        if outcome is not None:
            self._decisions.labels(outcome, approval.decided_via or "unknown").inc()
            if approval.decided_at is not None:
                waited = (approval.decided_at - approval.created_at).total_seconds()
                self._decision_seconds.labels(outcome).observe(max(waited, 0.0))
            return
        released = _RELEASE_OUTCOMES.get(approval.status)
        if released is not None:
            self._releases.labels(released).inc()

    # -- VoteListener -------------------------------------------------------------------------------

    def vote_cast(self, approval: Approval, approver: str, outcome: str) -> None:
        self._votes.labels(outcome).inc()

    # -- EscalationListener -----------------------------------------------------------------------

    async def approval_escalated(self, escalated: Escalated) -> None:
        self._escalations.labels(str(escalated.number)).inc()

    # -- EditListener -------------------------------------------------------------------------------

    def edit_made(self, approval: Approval, outcome: str) -> None:
        self._edits.labels(outcome).inc()

    # -- GrantListener ------------------------------------------------------------------------------

    def grant_made(self, approval: Approval, grant: Grant) -> None:
        self._grant_events["created"] += 1

    def grant_revoked(self, grant: Grant) -> None:
        self._grant_events["revoked"] += 1

    # -- exposition ----------------------------------------------------------------------------------

    async def render(self) -> bytes:
        """The text exposition, with the pending queue depth read from the store now (one indexed count)."""
        try:
            pending = await self._pending_count()
        except StoreUnavailable:
            self._store_up.set(0)
        else:
            self._pending.set(pending)
            self._store_up.set(1)
        return generate_latest(self.registry)


class _CallCollector(Collector):
    def __init__(
        self,
        calls: CallCounts,
        upstream_latency: UpstreamLatency,
        held_calls: Callable[[], int],
        grant_events: dict[str, int],
    ):
        self._grant_events = grant_events
        self._calls = calls
        self._upstream_latency = upstream_latency
        self._held_calls = held_calls

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        return iter(self._families())

    def _families(self) -> list[Metric]:
        calls = CounterMetricFamily(
            "broker_tool_calls",
            "Agent tool calls by what the policy did (allow, deny, hide, require_approval, rate_limited; "
            "granted: held by the policy and let through by a time-boxed grant; spend_limited: refused by "
            "a spend or count limit)",
            labels=["action"],
        )
        for action, count in self._calls.by_action().items():
            calls.add_metric([action], count)
        latency = HistogramMetricFamily(
            "broker_upstream_call_seconds",
            "Seconds per tools/call forwarded to an upstream server (allowed and released calls)",
            labels=["server"],
        )
        for server, histogram in sorted(self._upstream_latency.servers().items()):
            latency.add_metric([server], histogram.cumulative(), histogram.total)
        held = GaugeMetricFamily(
            "broker_held_calls",
            "Agent requests waiting on this replica for a human decision right now",
            value=self._held_calls(),
        )
        grants = CounterMetricFamily(
            "broker_grants",
            "Time-boxed grants on this replica: created (by a deciding vote here), used (a held call "
            "let through here), revoked (here)",
            labels=["event"],
        )
        for event, count in (*self._grant_events.items(), ("used", self._calls.granted)):
            grants.add_metric([event], count)
        return [calls, latency, held, grants]
