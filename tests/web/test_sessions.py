"""Session cookies: signed, tamper-evident, bounded in time, and carrying a per-session CSRF token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.channels.web.sessions import Session, SessionSigner
from broker.channels.web.throttle import SigninThrottle


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def signer(clock: FakeClock, secret: bytes = b"0123456789abcdef-secret") -> SessionSigner:
    return SessionSigner(secret, max_age=timedelta(hours=12), clock=clock)


def test_a_session_survives_the_round_trip() -> None:
    clock = FakeClock()
    session = Session.signed_in("alice", "fingerprint", clock())
    read = signer(clock).loads(signer(clock).dumps(session))
    assert read == session
    signed_on = Session.signed_in("bob", "oidc:1234", clock(), groups=("leads",), id_token="a.b.c")
    assert signer(clock).loads(signer(clock).dumps(signed_on)) == signed_on


def test_a_tampered_or_foreign_cookie_reads_as_no_session() -> None:
    clock = FakeClock()
    cookie = signer(clock).dumps(Session.signed_in("alice", "fp", clock()))
    body, signature = cookie.split(".")
    forged_body = signer(clock).dumps(Session.signed_in("mallory", "fp", clock())).split(".")[0]
    assert signer(clock).loads(f"{forged_body}.{signature}") is None
    assert signer(clock).loads(f"{body}.{signature[:-2]}AA") is None
    assert signer(clock, b"another-secret-of-16+").loads(cookie) is None
    for junk in ("", "no-dot", "a.b.c", "!!.??", f"{body}."):
        assert signer(clock).loads(junk) is None


def test_a_session_ends_after_its_maximum_age() -> None:
    clock = FakeClock()
    cookie = signer(clock).dumps(Session.anonymous(clock()))
    clock.advance(timedelta(hours=11, minutes=59))
    assert signer(clock).loads(cookie) is not None
    clock.advance(timedelta(minutes=2))
    assert signer(clock).loads(cookie) is None


def test_signing_in_issues_a_new_csrf_token_and_tokens_are_compared_exactly() -> None:
    clock = FakeClock()
    anonymous = Session.anonymous(clock())
    signed_in = Session.signed_in("alice", "fp", clock())
    assert anonymous.csrf_token != signed_in.csrf_token
    assert signed_in.csrf_matches(signed_in.csrf_token)
    assert not signed_in.csrf_matches(anonymous.csrf_token)
    assert not signed_in.csrf_matches("")
    assert not signed_in.csrf_matches(None)


def test_repeated_failures_lock_an_account_and_an_address_until_the_window_passes() -> None:
    clock = FakeClock()
    throttle = SigninThrottle(clock=clock, max_failures=3, window=timedelta(minutes=10))
    for _ in range(3):
        assert throttle.retry_after("alice", "10.0.0.1") is None
        throttle.failed("alice", "10.0.0.1")
    assert throttle.retry_after("alice", "10.0.0.1") == timedelta(minutes=10)
    # The same account from elsewhere, and another account from the same address, wait too.
    assert throttle.retry_after("Alice", "10.9.9.9") is not None
    assert throttle.retry_after("bob", "10.0.0.1") is not None
    assert throttle.retry_after("bob", "10.9.9.9") is None
    clock.advance(timedelta(minutes=10))
    assert throttle.retry_after("alice", "10.0.0.1") is None


def test_a_success_clears_the_accounts_failures_but_not_the_addresses() -> None:
    clock = FakeClock()
    throttle = SigninThrottle(clock=clock, max_failures=2, window=timedelta(minutes=10))
    throttle.failed("alice", "10.0.0.1")
    throttle.failed("bob", "10.0.0.1")
    throttle.succeeded("alice", "10.0.0.1")
    assert throttle.retry_after("alice", "10.0.0.2") is None
    assert throttle.retry_after("carol", "10.0.0.1") is not None


def test_the_throttle_forgets_the_oldest_keys_beyond_its_bound() -> None:
    clock = FakeClock()
    throttle = SigninThrottle(clock=clock, max_failures=1, max_keys=4)
    for index in range(10):
        throttle.failed(f"user{index}", f"10.0.0.{index}")
    assert throttle.retry_after("user0", "10.0.0.200") is None
    assert throttle.retry_after("user9", "10.0.0.200") is not None


def test_attempts_still_being_checked_count_against_the_limit() -> None:
    clock = FakeClock()
    throttle = SigninThrottle(clock=clock, max_failures=3, window=timedelta(minutes=10))
    # A burst sent together: only as many may be checked at once as failures are still allowed.
    admitted = [throttle.begin("alice", f"10.0.0.{n}") is None for n in range(10)]
    assert admitted == [True] * 3 + [False] * 7
    throttle.failed("alice", "10.0.0.0")
    throttle.succeeded("alice", "10.0.0.1")
    throttle.failed("alice", "10.0.0.2")
    assert throttle.begin("alice", "10.0.0.3") is None
