"""Who a forwarded call is made for, as the upstream credentials see it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class UpstreamCaller:
    """The agent behind a call: its name as the policy sees it and, when it signed in with OAuth,
    its token's claims and the raw token (for token exchange only; never sent upstream as is).

    An agent that presented an API key has a name and no claims."""

    agent: str
    claims: Mapping[str, Any] = field(default_factory=dict)
    token: str | None = field(default=None, repr=False)
