"""Where humans meet held calls: the HTTP decisions API, Slack, the web inbox.

Channels reach the proxy only through `broker.approvals.service.ApprovalService`.
"""
