"""The policy in force, swapped atomically on reload."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.policy import Policy


class PolicyHolder:
    """Readers take `current` once per call, so a reload mid-call never mixes two revisions."""

    def __init__(self, policy: Policy) -> None:
        self.current = policy
