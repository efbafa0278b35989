"""Slows password guessing: after a few failed sign-ins an account, or an address, waits."""

from __future__ import annotations

from collections import OrderedDict, deque
from datetime import datetime, timedelta

from broker.approvals.clock import Clock


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

    def retry_after(self, user: str, address: str) -> timedelta | None:
        """How long until `user` from `address` may try again; None when they may try now."""
        now = self._clock()
        waits = [self._wait(key, now) for key in _keys(user, address)]
        longest = max((wait for wait in waits if wait is not None), default=None)
        return longest

    def failed(self, user: str, address: str) -> None:
        now = self._clock()
        for key in _keys(user, address):
            history = self._failures.pop(key, None) or deque(maxlen=self._max_failures)
            history.append(now)
            self._failures[key] = history
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, user: str, address: str) -> None:
        # Only the account's count is cleared: a success must not wipe an address's record of
        # failures against other accounts.
        self._failures.pop(_keys(user, address)[0], None)

    def _wait(self, key: str, now: datetime) -> timedelta | None:
        history = self._failures.get(key)
        if history is None:
            return None
        while history and now - history[0] >= self._window:
            history.popleft()
        if not history:
            del self._failures[key]
            return None
        if len(history) < self._max_failures:
            return None
        return history[0] + self._window - now


def _keys(user: str, address: str) -> tuple[str, str]:
    return f"user:{user.strip().casefold()}", f"addr:{address}"
