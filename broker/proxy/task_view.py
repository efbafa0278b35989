"""How an approval looks to an agent as an MCP task (2025-11-25): a held call served as a task is
its approval, read from the store, so a task outlives a broker restart."""

from __future__ import annotations

from broker.approvals import Approval, ApprovalStatus
from broker.proxy.held_answers import iso, status_text
from broker.proxy.upstream.base import JsonObject

RELATED_TASK_META_KEY = "io.modelcontextprotocol/related-task"
TASK_STATUS = {
    ApprovalStatus.PENDING: "working",
    ApprovalStatus.APPROVED: "working",
    ApprovalStatus.RELEASED: "working",
    ApprovalStatus.COMPLETED: "completed",
    ApprovalStatus.FAILED: "failed",
    ApprovalStatus.DENIED: "failed",
    ApprovalStatus.EXPIRED: "failed",
    ApprovalStatus.CANCELLED: "cancelled",
    ApprovalStatus.OUTCOME_UNKNOWN: "failed",
}


def task_of(approval: Approval, *, poll_interval_ms: int) -> JsonObject:
    """The task an approval with a task id is; kept a day past the approval's own deadline."""
    assert approval.task_id is not None
    updated = approval.completed_at or approval.decided_at or approval.released_at or approval.created_at
    ttl_ms = int((approval.expires_at - approval.created_at).total_seconds() * 1000) + 24 * 3600 * 1000
    return {
        "taskId": approval.task_id,
        "status": TASK_STATUS[approval.status],
        "statusMessage": status_text(approval),
        "createdAt": iso(approval.created_at),
        "lastUpdatedAt": iso(updated),
        "ttl": ttl_ms,
        "pollInterval": poll_interval_ms,
    }
