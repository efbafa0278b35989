"""What can go wrong between the broker and Slack.

Exception tree::

    SlackError
    ├── SlackUnavailable          Slack could not be reached or answered with a server error;
    │   │                         the same call may succeed later
    │   └── SlackRateLimited      HTTP 429; `retry_after` is how long Slack asked us to wait
    ├── SlackRejected             Slack answered ``ok: false`` (channel_not_found, invalid_auth, ...);
    │                             `code` is Slack's error code; repeating the call will not help
    └── InvalidInteraction        an inbound interaction is not one the broker will act on
        ├── UnverifiedRequest     missing or wrong signature, or a stale timestamp (answer 401)
        │   └── ReplayedRequest   signed by Slack, but already accepted once (answer 401)
        └── MalformedInteraction  verified, but not a payload the broker understands (answer 400)
"""

from __future__ import annotations


class SlackError(Exception):
    pass


class SlackUnavailable(SlackError):
    pass


class SlackRateLimited(SlackUnavailable):
    def __init__(self, method: str, retry_after: float) -> None:
        super().__init__(f"Slack rate-limited {method}; retry after {retry_after:g}s")
        self.method = method
        self.retry_after = retry_after


class SlackRejected(SlackError):
    def __init__(self, method: str, code: str) -> None:
        super().__init__(f"Slack refused {method}: {code}")
        self.method = method
        self.code = code


class InvalidInteraction(SlackError):
    pass


class UnverifiedRequest(InvalidInteraction):
    pass


class ReplayedRequest(UnverifiedRequest):
    pass


class MalformedInteraction(InvalidInteraction):
    pass
