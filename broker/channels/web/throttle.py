"""Slows password guessing: after a few failed sign-ins an account, or an address, waits."""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from datetime import datetime, timedelta

from broker.approvals.clock import Clock

IN_FLIGHT_RETRY = timedelta(seconds=1)
"""The wait when the limit is reached only by attempts still being checked."""


class SigninThrottle:
    """Counts failures per user name and per client address within a sliding window.

    Both keys count because a guesser either hammers one account from anywhere or many
    accounts from one place. Memory is bounded: the least recently failing keys are forgotten
    first, which at worst lets a very wide attack retry a little sooner.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        max_failures: int = 5,
        window: timedelta = timedelta(minutes=15),
        max_keys: int = 10_000,
    ) -> None:
        self._clock = clock
        self._max_failures = max_failures
        self._window = window
        self._max_keys = max_keys
        self._failures: OrderedDict[str, deque[datetime]] = OrderedDict()
        self._in_flight: Counter[str] = Counter()

    def retry_after(self, user: str, address: str) -> timedelta | None:
        """How long until `user` from `address` may try again; None when they may try now."""
        now = self._clock()
        waits = [self._wait(key, now) for key in _keys(user, address)]
        longest = max((wait for wait in waits if wait is not None), default=None)
        return longest

    def begin(self, user: str, address: str) -> timedelta | None:
        """Reserve an attempt, to be ended with `failed` or `succeeded`; or how long to wait.

        Attempts still being checked count as failures meanwhile: otherwise a burst of guesses
        sent together would all pass the check before the first failure is recorded.
        """
        wait = self.retry_after(user, address)
        if wait is None:
            for key in _keys(user, address):
                self._in_flight[key] += 1
        return wait

    def failed(self, user: str, address: str) -> None:
        self._end(user, address)
        now = self._clock()
        for key in _keys(user, address):
            history = self._failures.pop(key, None) or deque(maxlen=self._max_failures)
            history.append(now)
            self._failures[key] = history
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, user: str, address: str) -> None:
        self._end(user, address)
        # Only the account's count is cleared: a success must not wipe an address's record of
        # failures against other accounts.
        self._failures.pop(_keys(user, address)[0], None)

    def _end(self, user: str, address: str) -> None:
        for key in _keys(user, address):
            if self._in_flight[key] > 1:
                self._in_flight[key] -= 1
            else:
                self._in_flight.pop(key, None)

    def _wait(self, key: str, now: datetime) -> timedelta | None:
        history = self._failures.get(key)
        if history is not None:
            while history and now - history[0] >= self._window:
                history.popleft()
            if not history:
                del self._failures[key]
                history = None
        failures = len(history) if history is not None else 0
        if failures + self._in_flight[key] < self._max_failures:
            return None
        if history is not None and failures >= self._max_failures:
            return history[0] + self._window - now
        return IN_FLIGHT_RETRY


def _keys(user: str, address: str) -> tuple[str, str]:
    return f"user:{user.strip().casefold()}", f"addr:{address}"
