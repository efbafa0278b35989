"""Tool/agent patterns and durations: the small parsers the loader leans on."""

from __future__ import annotations

import pytest

from broker.policy import AgentScope, ToolPattern
from broker.policy.duration import parse_duration


@pytest.mark.parametrize(
    ("text", "is_glob", "literal"),
    [
        ("get_ticker", False, 10),
        ("get_*", True, 4),
        ("get_?icker", True, 9),
        ("get_[tb]icker", True, 9),
        ("get_[!t]icker", True, 9),
        ("get_[]]x", True, 5),
        ("get_[ticker", False, 11),
        ("*", True, 0),
    ],
)
def test_patterns_know_whether_they_are_globs_and_how_specific(
    text: str, is_glob: bool, literal: int
) -> None:
    pattern = ToolPattern.compile(text)
    assert (pattern.is_glob, pattern.literal_characters) == (is_glob, literal)


def test_pattern_matching_is_whole_name_and_case_sensitive() -> None:
    assert ToolPattern.compile("get_*").matches("get_ticker")
    assert not ToolPattern.compile("get_*").matches("xget_ticker")
    assert not ToolPattern.compile("get_*").matches("GET_ticker")
    assert ToolPattern.compile("get_[tb]*").matches("get_balances")
    assert not ToolPattern.compile("get_[!tb]*").matches("get_balances")
    assert ToolPattern.compile("get_[ticker").matches("get_[ticker")
    assert not ToolPattern.compile("get_ticker").matches("get_ticker2")
    assert ToolPattern.compile("*").matches("line\nbreak")


def test_agent_scope_matches_names_and_globs_but_never_an_unnamed_agent() -> None:
    scope = AgentScope(("trading-bot", "paper-*"))
    assert scope.admits("trading-bot")
    assert scope.admits("paper-1")
    assert not scope.admits("trading-bot-2")
    assert not scope.admits("chat")
    assert not scope.admits(None)
    assert not AgentScope(("*",)).admits(None)
    assert AgentScope(("*",)).admits("")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (0.5, 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1.5d", 129600.0),
        (" 2m ", 120.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", [0, -1, "0s", "5", "5 m", "m", "", True, None, float("inf"), float("nan"), [5]]
)
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_duration(value)
