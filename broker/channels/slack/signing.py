"""Proof that an interaction request came from Slack: its signing-secret HMAC and a fresh timestamp.

Slack signs ``v0:{X-Slack-Request-Timestamp}:{raw body}`` with HMAC-SHA256 under the app's
signing secret and sends ``v0=<hex>`` in ``X-Slack-Signature``. The timestamp bound stops a
captured request from being replayed later; within the bound, `VerifiedRequest.digest` names the
request so that the endpoint accepts it only once (broker.approvals.ports.SeenRequests).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from broker.channels.slack.errors import UnverifiedRequest

MAX_CLOCK_SKEW_SECONDS = 300.0
SIGNATURE_VERSION = "v0"
REPLICA_CLOCK_MARGIN_SECONDS = 300.0
"""How much longer than the window a seen signature is remembered: another replica whose clock is
behind would still accept it until its own clock reaches the end of the window."""
_DIGEST_CONTEXT = b"slack interaction\x00"


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    digest: str
    """SHA-256 of the signature (hex): the same request sent again has the same one."""
    expires_at: datetime
    """Until when the signature could pass `verify` on some replica, clock margin included."""


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` value Slack sends for `body` at `timestamp`."""
    base = f"{SIGNATURE_VERSION}:{timestamp}:".encode() + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


class RequestVerifier:
    def __init__(
        self,
        signing_secret: str,
        *,
        wall_clock: Callable[[], float] = time.time,
        max_skew: float = MAX_CLOCK_SKEW_SECONDS,
    ) -> None:
        if not signing_secret:
            raise ValueError("a Slack signing secret is required to verify interactions")
        self._secret = signing_secret
        self._wall_clock = wall_clock
        self._max_skew = max_skew

    def verify(self, *, timestamp: str | None, signature: str | None, body: bytes) -> VerifiedRequest:
        """What names the request when it is Slack's; raises UnverifiedRequest saying why not.

        The signature covers the timestamp and the body, so its digest names the request.
        """
        if not timestamp or not signature:
            raise UnverifiedRequest("missing X-Slack-Request-Timestamp or X-Slack-Signature")
        try:
            sent_at = int(timestamp)
        except ValueError:
            raise UnverifiedRequest(
                f"X-Slack-Request-Timestamp is not a Unix time: {timestamp[:40]!r}"
            ) from None
        skew = abs(self._wall_clock() - sent_at)
        if skew > self._max_skew:
            raise UnverifiedRequest(
                f"request timestamp is {skew:.0f}s away from now (more than {self._max_skew:.0f}s): "
                "stale or replayed"
            )
        expected = slack_signature(self._secret, timestamp, body)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise UnverifiedRequest("X-Slack-Signature does not match the request body")
        return VerifiedRequest(
            digest=hashlib.sha256(_DIGEST_CONTEXT + expected.encode()).hexdigest(),
            expires_at=datetime.fromtimestamp(
                sent_at + self._max_skew + REPLICA_CLOCK_MARGIN_SECONDS, tz=UTC
            ),
        )
