"""Amounts of ``sum`` limits: a small arithmetic expression over a call's arguments, exact.

Grammar (parsed by hand into a tree and evaluated by walking it, never by ``eval``)::

    expr := term (("+" | "-") term)* ;  term := factor ("*" factor)* ;
    factor := number | args.path | "(" expr ")" | "-" factor

Every value an expression reads must be a JSON number: a bool, a string (even ``"10"``), a null,
NaN or an infinity, or a missing argument raises `AmountError` naming the path. Arithmetic is
`Decimal` (floats enter through their shortest text, so 0.1 is 0.1). See broker/policy/limits.py.
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

DECIMAL_CONTEXT = decimal.Context(prec=60, traps=[decimal.InvalidOperation, decimal.Overflow])


class AmountError(ValueError):
    """A call's arguments do not give a usable amount; the message says which path and why."""


class ExpressionError(ValueError):
    """A ``sum`` expression that does not parse; the message says where."""


# --- expressions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Number:
    value: Decimal


@dataclass(frozen=True, slots=True)
class ArgPath:
    parts: tuple[str, ...]

    @property
    def text(self) -> str:
        return "args." + ".".join(self.parts)


@dataclass(frozen=True, slots=True)
class Negate:
    operand: Expression


@dataclass(frozen=True, slots=True)
class Binary:
    operator: Literal["+", "-", "*"]
    left: Expression
    right: Expression


Expression = Number | ArgPath | Negate | Binary

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|(args(?:\.[A-Za-z_][A-Za-z0-9_-]*)+)|([-+*()]))")
_MAX_EXPRESSION = 500


def parse_expression(text: str) -> Expression:
    """The tree of `text`; raises ExpressionError. Grammar::

    expr := term (("+" | "-") term)* ;  term := factor ("*" factor)* ;
    factor := number | args.path | "(" expr ")" | "-" factor
    """
    if len(text) > _MAX_EXPRESSION:
        raise ExpressionError(f"is longer than {_MAX_EXPRESSION} characters")
    tokens: list[tuple[str, str]] = []
    position = 0
    stripped = text.rstrip()
    while position < len(stripped):
        match = _TOKEN.match(stripped, position)
        if match is None:
            raise ExpressionError(
                f"cannot read {stripped[position:].strip()[:20]!r} at character {position + 1}: "
                "write argument paths (args.amount), numbers, + - * and parentheses"
            )
        number, path, symbol = match.groups()
        tokens.append(("num", number) if number else ("path", path) if path else ("sym", symbol))
        position = match.end()
    if not tokens:
        raise ExpressionError("is empty")
    parser = _Parser(tokens)
    tree = parser.expression()
    if parser.index != len(tokens):
        raise ExpressionError(f"has an unexpected {tokens[parser.index][1]!r}")
    return tree


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    def _peek(self) -> str | None:
        return self.tokens[self.index][1] if self.index < len(self.tokens) else None

    def expression(self) -> Expression:
        self.depth += 1
        if self.depth > 50:
            raise ExpressionError("is nested too deeply")
        tree = self._term()
        while (symbol := self._peek()) in ("+", "-"):
            self.index += 1
            tree = Binary("+" if symbol == "+" else "-", tree, self._term())
        self.depth -= 1
        return tree

    def _term(self) -> Expression:
        tree = self._factor()
        while self._peek() == "*":
            self.index += 1
            tree = Binary("*", tree, self._factor())
        return tree

    def _factor(self) -> Expression:
        if self.index >= len(self.tokens):
            raise ExpressionError("ends too early")
        kind, value = self.tokens[self.index]
        self.index += 1
        if kind == "num":
            return Number(Decimal(value))
        if kind == "path":
            return ArgPath(tuple(value.split(".")[1:]))
        if value == "(":
            inner = self.expression()
            if self._peek() != ")":
                raise ExpressionError("has a '(' without its ')'")
            self.index += 1
            return inner
        if value == "-":
            self.depth += 1
            if self.depth > 50:
                raise ExpressionError("is nested too deeply")
            operand = self._factor()
            self.depth -= 1
            return Negate(operand)
        raise ExpressionError(f"has an unexpected {value!r}")


def evaluate(tree: Expression, arguments: Mapping[str, object] | None) -> Decimal:
    """The exact value of `tree` over `arguments`; raises AmountError for an unusable argument."""
    if isinstance(tree, Number):
        return tree.value
    if isinstance(tree, ArgPath):
        return _argument(tree, arguments)
    if isinstance(tree, Negate):
        return DECIMAL_CONTEXT.minus(evaluate(tree.operand, arguments))
    left = evaluate(tree.left, arguments)
    right = evaluate(tree.right, arguments)
    try:
        if tree.operator == "+":
            return DECIMAL_CONTEXT.add(left, right)
        if tree.operator == "-":
            return DECIMAL_CONTEXT.subtract(left, right)
        return DECIMAL_CONTEXT.multiply(left, right)
    except (decimal.InvalidOperation, decimal.Overflow):
        raise AmountError("the amount is too large to compute") from None


def _argument(path: ArgPath, arguments: Mapping[str, object] | None) -> Decimal:
    value: object = arguments
    for part in path.parts:
        if not isinstance(value, Mapping) or part not in value:
            raise AmountError(f"{path.text} is missing: the limit needs it as a number")
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "null" if value is None else type(value).__name__
        raise AmountError(f"{path.text} must be a JSON number, got {kind}")
    if isinstance(value, float) and not math.isfinite(value):
        raise AmountError(f"{path.text} must be a finite number, got {value}")
    # str(float) is the shortest text that reads back as the same float: 0.1 -> Decimal("0.1").
    return Decimal(str(value)) if isinstance(value, float) else Decimal(value)


def expression_text(tree: Expression) -> str:
    if isinstance(tree, Number):
        return str(tree.value)
    if isinstance(tree, ArgPath):
        return tree.text
    if isinstance(tree, Negate):
        return f"-{expression_text(tree.operand)}"
    return f"({expression_text(tree.left)} {tree.operator} {expression_text(tree.right)})"
