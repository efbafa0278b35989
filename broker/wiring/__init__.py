"""Builders the composition root (`broker/app.py`) delegates to, one module per domain.

This is the one place outside `broker/app.py` where the layers meet: `approvals.py` (the approval
service and the quorum check at start), `store.py` (where counters live, replica notifications),
`proxy.py` (the agent-facing side), `channels.py` (the human-facing side: SSO, web inbox, Slack),
`http.py` (readiness, status and the ASGI entry) and `tools.py` (what the policy says of each
upstream tool). Nothing in `broker/` but `broker/app.py` imports this package.
"""
