"""The web approval inbox: server-rendered pages where approvers see held calls and decide them.

Pages: ``/`` (pending calls, live), ``/approvals/{id}`` (one call, its rule and audit trail,
Approve / Deny), ``/history``, ``/tools``; ``/login`` and ``/logout``; with ``web.sso``,
``/signin/oidc`` and its callback; ``/events`` streams every approval change in this process
to open pages (server-sent events).

Approvers sign in with a password (scrypt hash in the configuration, see
`broker.channels.web.passwords` and ``broker hash-password``), with the company's OpenID
Connect provider (`broker.channels.web.oidc`), or are named by an authenticating reverse proxy
in a trusted header, believed only from the configured proxy addresses. Every
state-changing request must come from the inbox's own pages: the browser's word on it
(`broker.channels.web.origin`) and the session's CSRF token (`broker.channels.web.sessions`).

Exception tree::

    ValueError
    └── PasswordHashError      a configured password hash is malformed or asks for unsafe cost
"""

from broker.channels.web.events import InboxEvents
from broker.channels.web.inbox import WebInbox
from broker.channels.web.passwords import (
    PasswordHashError,
    hash_password,
    parse_password_hash,
    verify_password,
)
from broker.channels.web.tools_view import ToolSources

__all__ = [
    "InboxEvents",
    "PasswordHashError",
    "ToolSources",
    "WebInbox",
    "hash_password",
    "parse_password_hash",
    "verify_password",
]
