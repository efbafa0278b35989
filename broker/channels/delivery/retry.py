"""How long a channel waits between failed calls, and which failures go into the audit trail."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Capped exponential backoff for a channel's calls (Slack's): first_delay, doubling up to
    max_delay, and then max_delay for as long as the call keeps failing."""

    first_delay: float = 2.0
    max_delay: float = 120.0

    def __post_init__(self) -> None:
        if not 0 < self.first_delay <= self.max_delay:
            raise ValueError(f"need 0 < first_delay <= max_delay, got {self.first_delay}, {self.max_delay}")

    def delay(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row (counting from 1)."""
        return min(self.first_delay * 2.0 ** min(max(failures - 1, 0), 60), self.max_delay)

    def delays(self) -> Iterator[float]:
        """The waits after one failure after another, without end."""
        failures = 0
        while True:
            failures += 1
            yield self.delay(failures)


DEFAULT_RETRY_SCHEDULE = RetrySchedule()


def worth_recording(attempt: int) -> bool:
    """Failures recorded in the audit trail: attempts 1, 2, 4, 8, ... (the rest are only logged)."""
    return attempt >= 1 and attempt & (attempt - 1) == 0
