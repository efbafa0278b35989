"""Agent keys: only the right key names an agent, also once the key has been seen before."""

from __future__ import annotations

import hashlib

from broker.proxy.auth.api_keys import ANONYMOUS_AGENT, AgentCredential, ApiKeyVerifier
from broker.proxy.auth.build import API_KEY_REFUSAL


def verifier(*, allow_anonymous: bool = False) -> ApiKeyVerifier:
    digest = hashlib.sha256(b"key-1").hexdigest()
    return ApiKeyVerifier(
        {"bot": AgentCredential("bot", digest)}, API_KEY_REFUSAL, allow_anonymous=allow_anonymous
    )


def agent_of(keys: ApiKeyVerifier, header: bytes | None) -> str | None:
    identity = keys.identify(header)
    return identity.agent if identity is not None else None


def test_a_proven_key_keeps_naming_its_agent_and_other_keys_are_still_checked() -> None:
    keys = verifier()
    for _ in range(3):
        assert agent_of(keys, b"Bearer key-1") == "bot"
    assert keys.identify(b"Bearer key-1") is keys.identify(b"bearer  key-1 ")
    assert agent_of(keys, b"Bearer key-2") is None
    assert agent_of(keys, b"Basic key-1") is None
    assert agent_of(keys, b"Bearer ") is None
    assert agent_of(keys, None) is None
    # Rejected keys are never remembered, so they cannot grow what is kept.
    for n in range(1000):
        assert agent_of(keys, f"Bearer guess-{n}".encode()) is None
    assert len(keys._proven) == 2


def test_no_header_is_the_anonymous_agent_only_when_allowed() -> None:
    anonymous = verifier(allow_anonymous=True).identify(None)
    assert anonymous is not None and (anonymous.agent, anonymous.method) == (ANONYMOUS_AGENT, "anonymous")
    assert verifier(allow_anonymous=True).identify(b"Bearer wrong") is None
    assert verifier().identify(b"") is None
