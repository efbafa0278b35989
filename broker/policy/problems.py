"""What goes wrong when a policy document is loaded, pinned to where it went wrong.

Exception tree::

    PolicyError        the document could not be loaded; ``.problems`` lists every finding,
                       each with the line and column of the offending key or value

A loader collects as many problems as it can before raising, so an operator fixes a
file in one pass instead of one error per reload.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One finding; `line` and `column` are 1-based positions in the source text."""

    source: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.column}: {self.message}"


class PolicyError(Exception):
    def __init__(self, problems: Iterable[PolicyProblem]) -> None:
        ordered = sorted(problems, key=lambda problem: (problem.line, problem.column))
        if not ordered:
            raise ValueError("PolicyError needs at least one problem")
        self.problems: list[PolicyProblem] = ordered
        super().__init__("\n".join(str(problem) for problem in ordered))
