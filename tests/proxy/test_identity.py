"""Agent keys: only the right key names an agent, also once the key has been seen before."""

from __future__ import annotations

import hashlib

from broker.proxy.identity import AgentCredential, Authenticator


def test_a_proven_key_keeps_naming_its_agent_and_other_keys_are_still_checked() -> None:
    digest = hashlib.sha256(b"key-1").hexdigest()
    auth = Authenticator({"bot": AgentCredential("bot", digest)})

    for _ in range(3):
        assert auth.agent_for_header(b"Bearer key-1") == "bot"
    assert auth.agent_for_header(b"Bearer key-2") is None
    assert auth.agent_for_header(b"Basic key-1") is None
    assert auth.agent_for_header(None) is None
    # Rejected keys are never remembered, so they cannot grow what is kept.
    for n in range(1000):
        assert auth.agent_for_header(f"Bearer guess-{n}".encode()) is None
    assert len(auth._proven) == 1
