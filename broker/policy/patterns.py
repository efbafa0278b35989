"""Name patterns: tool names and agent names, exact or shell-style globs (``*``, ``?``, ``[...]``).

Matching is case-sensitive and follows `fnmatch.fnmatchcase`. A pattern's specificity is the
number of its literal characters: ``get_*`` (4) is less specific than ``get_token_*`` (10).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ToolPattern:
    text: str
    is_glob: bool
    literal_characters: int
    _regex: re.Pattern[str] | None = field(repr=False, compare=False)

    @classmethod
    def compile(cls, text: str) -> ToolPattern:
        is_glob, literal_characters = _scan_glob(text)
        regex = re.compile(fnmatch.translate(text)) if is_glob else None
        return cls(text, is_glob, literal_characters, regex)

    def matches(self, name: str) -> bool:
        if self._regex is None:
            return name == self.text
        return self._regex.match(name) is not None


class AgentScope:
    """The agents a rule is limited to. An unnamed agent (None) is in no scope."""

    __slots__ = ("_exact", "_glob", "patterns")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        self._exact = frozenset(pattern for pattern in patterns if not _scan_glob(pattern)[0])
        globs = [fnmatch.translate(pattern) for pattern in patterns if _scan_glob(pattern)[0]]
        self._glob = re.compile("|".join(f"(?:{glob})" for glob in globs)) if globs else None

    def admits(self, agent: str | None) -> bool:
        if agent is None:
            return False
        if agent in self._exact:
            return True
        return self._glob is not None and self._glob.match(agent) is not None

    def __repr__(self) -> str:
        return f"AgentScope({list(self.patterns)!r})"


def _scan_glob(pattern: str) -> tuple[bool, int]:
    """(has wildcards, literal character count), reading brackets exactly as fnmatch.translate does."""
    is_glob = False
    literal = 0
    index, length = 0, len(pattern)
    while index < length:
        char = pattern[index]
        index += 1
        if char in "*?":
            is_glob = True
        elif char == "[":
            end = index
            if end < length and pattern[end] == "!":
                end += 1
            if end < length and pattern[end] == "]":
                end += 1
            end = pattern.find("]", end)
            if end == -1:
                literal += 1  # an unclosed '[' is an ordinary character to fnmatch
            else:
                is_glob = True
                index = end + 1
        else:
            literal += 1
    return is_glob, literal
