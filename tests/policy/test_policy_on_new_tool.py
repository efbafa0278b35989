"""The ``on_new_tool`` policy key (strict pinning, broker/policy/engine.py "Changed tool definitions")."""

from __future__ import annotations

import pytest

from broker.policy import Action, PolicyError, load_policy


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("accept", None), ("require_approval", Action.REQUIRE_APPROVAL), ("hide", Action.HIDE)],
)
def test_on_new_tool_takes_accept_require_approval_or_hide(
    value: str | None, expected: Action | None
) -> None:
    line = "" if value is None else f"on_new_tool: {value}\n"
    assert load_policy(f'version: "1"\ndefault: allow\n{line}').on_new_tool is expected


@pytest.mark.parametrize("value", ["allow", "deny", "[hide]", "{a: b}", "Hide"])
def test_anything_else_is_a_positioned_error(value: str) -> None:
    with pytest.raises(PolicyError) as refused:
        load_policy(f'version: "1"\ndefault: allow\non_new_tool: {value}\n', source="policy.yaml")
    message = str(refused.value)
    assert (
        "policy.yaml:3:14" in message and "on_new_tool must be accept, require_approval or hide" in message
    ), message
