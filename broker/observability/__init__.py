"""What a broker replica tells its operators: Prometheus metrics at `/metrics`."""

from broker.observability.calls import CallCounts, LatencyHistogram, UpstreamLatency
from broker.observability.metrics import BrokerMetrics

__all__ = ["BrokerMetrics", "CallCounts", "LatencyHistogram", "UpstreamLatency"]
