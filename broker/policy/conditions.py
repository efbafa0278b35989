"""`when` conditions: a path into the call's arguments, an operator and an operand.

Conditions are compiled once, when the policy loads, into a resolver (path -> value) and a
test (value -> bool) so a call pays for a few dict lookups and one comparison, nothing more.

Paths are ``args.<key>[.<key>...]``; a segment of ASCII digits indexes a list
(``args.orders.0.qty``) and is an ordinary key inside a mapping. Keys containing dots
cannot be addressed.

Paths ``claims.<key>[...]`` read the verified access token of an agent that signed in with
OAuth (``claims.groups contains ops``, ``claims.scope matches ".*trade.*"``). The gateway hands
them over only for such agents (`with_claims`), so API-key agents pay nothing; for them every
``claims.`` path is missing. A held call keeps the claims it was decided with
(`Approval.claims`), so the re-checks when a person decides it and at its release read the same
claims as its first decision, even after the token expired.

Operators and their meaning (a *missing* path is one that does not resolve: absent key,
index past the end, or stepping into a scalar):

=========  ==========================================================================
eq, ne     equality by JSON type: ``true`` is not ``1``, ``"a"`` is not ``["a"]``
gt, gte,   numeric order; the operand must be a number
lt, lte
in,        membership in the operand list, by the same equality as ``eq``
not_in
contains   a string argument contains the operand as a substring, or a list argument
           has an element equal to the operand
matches    a string argument matches the regular expression operand *in full*
           (``re.fullmatch``): ``[A-Z]+USDT`` does not accept ``"BTCUSDT; x"``
exists     ``true``: the path resolves (even to null); ``false``: it does not
=========  ==========================================================================

* A missing path makes ``eq``, ``gt``/``gte``/``lt``/``lte``, ``in``, ``contains`` and
  ``matches`` false. The negations ``ne`` and ``not_in`` are exactly "not ``eq``" and
  "not ``in``", so they are *true* for a missing path, as is ``exists: false``.
* A value of the wrong type makes a comparison false, never an error.
* Where the operand is a number, an argument holding a decimal string (``"150"``,
  ``"0.25"``) is compared as that number, just as if it had been sent unquoted. Exchange
  APIs commonly take quantities as strings, and a threshold must not be sidestepped by
  quoting the number.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from broker.policy.document import describe_value

OPERATORS: Final = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "matches", "exists")
PATH_PREFIX: Final = "args."
CLAIMS_PREFIX: Final = "claims."

Resolver = Callable[[Mapping[str, Any]], Any]
Test = Callable[[Any], bool]
Check = Callable[[Mapping[str, Any]], bool]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()
"""What a path resolves to when it does not exist in the arguments."""

_NUMERIC_TEXT = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")
_INTEGER_TEXT = re.compile(r"\s*[+-]?\d+\s*")


@dataclass(frozen=True, slots=True)
class Condition:
    path: str
    operator: str
    operand: Any
    resolve: Resolver = field(repr=False, compare=False)
    test: Test = field(repr=False, compare=False)

    def holds(self, arguments: Mapping[str, Any]) -> bool:
        return self.test(self.resolve(arguments))

    def describe(self) -> str:
        return f"{self.path} {self.operator} {json.dumps(self.operand, ensure_ascii=False)}"

    def probe(self, arguments: Mapping[str, Any]) -> tuple[bool, str]:
        """Whether it holds, and the argument value it looked at, in words (for explanations)."""
        value = self.resolve(arguments)
        if value is MISSING:
            seen = f"{self.path} is missing"
        else:
            shown = json.dumps(value, ensure_ascii=False, default=repr)
            seen = f"{self.path} = {shown if len(shown) <= 80 else shown[:77] + '...'}"
        return self.test(value), seen


class ArgumentsWithClaims(dict[str, Any]):
    """The call's arguments, plus the caller's token claims for ``claims.`` paths."""

    __slots__ = ("claims",)

    def __init__(self, arguments: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
        super().__init__(arguments)
        self.claims = claims


def with_claims(arguments: Mapping[str, Any], claims: Mapping[str, Any]) -> ArgumentsWithClaims:
    return ArgumentsWithClaims(arguments, claims)


def compile_path(path: str) -> Resolver:
    """A resolver for ``args.a.0.b`` or ``claims.a``; raises ValueError naming what is wrong with the path."""
    if path.startswith(CLAIMS_PREFIX):
        inner = compile_path(PATH_PREFIX + path[len(CLAIMS_PREFIX) :])

        def resolve_claim(arguments: Mapping[str, Any]) -> Any:
            claims = getattr(arguments, "claims", None)
            return MISSING if claims is None else inner(claims)

        return resolve_claim
    if not path.startswith(PATH_PREFIX):
        raise ValueError(
            f"condition path '{path}' must start with 'args.' or 'claims.' (e.g. 'args.quantity')"
        )
    segments = path[len(PATH_PREFIX) :].split(".")
    if any(not segment for segment in segments):
        raise ValueError(f"condition path '{path}' has an empty segment")
    steps = tuple(
        (segment, int(segment) if segment.isascii() and segment.isdigit() else None) for segment in segments
    )
    if len(steps) == 1:
        only_key = segments[0]

        def resolve_top_level(arguments: Mapping[str, Any]) -> Any:
            if type(arguments) is dict:
                return arguments.get(only_key, MISSING)
            return _step(arguments, only_key, None)

        return resolve_top_level

    def resolve(arguments: Mapping[str, Any]) -> Any:
        current: Any = arguments
        for key, index in steps:
            current = _step(current, key, index)
            if current is MISSING:
                break
        return current

    return resolve


def compile_test(operator: str, operand: Any) -> Test:
    """The test for one operator; raises ValueError if the operand does not suit the operator."""
    if operator in ("eq", "ne"):
        equals = _equality_test(operand)
        return equals if operator == "eq" else _negation(equals)
    if operator in ("gt", "gte", "lt", "lte"):
        return _order_test(operator, operand)
    if operator in ("in", "not_in"):
        if not isinstance(operand, list):
            raise ValueError(f"'{operator}' needs a list of values, got {describe_value(operand)}")
        member = _membership_test(operand)
        return member if operator == "in" else _negation(member)
    if operator == "contains":
        return _containment_test(operand)
    if operator == "matches":
        return _regex_test(operand)
    if operator == "exists":
        if not isinstance(operand, bool):
            raise ValueError(f"'exists' needs true or false, got {describe_value(operand)}")
        if operand:
            return lambda value: value is not MISSING
        return lambda value: value is MISSING
    raise ValueError(f"unknown operator '{operator}'")


def all_hold(conditions: Sequence[Condition]) -> Check:
    """One callable that is true when every condition holds, short-circuiting."""
    if len(conditions) == 1:
        resolve, test = conditions[0].resolve, conditions[0].test
        return lambda arguments: test(resolve(arguments))
    pairs = tuple((condition.resolve, condition.test) for condition in conditions)

    def check(arguments: Mapping[str, Any]) -> bool:
        # A plain loop: all() over a generator costs noticeably more on this per-call path.
        for resolve, test in pairs:  # noqa: SIM110
            if not test(resolve(arguments)):
                return False
        return True

    return check


def as_number(value: Any) -> int | float | None:
    """`value` as a number if it is one or is a decimal string; None otherwise (booleans are not numbers)."""
    kind = type(value)
    if kind is int or kind is float:
        return value  # type: ignore[no-any-return]
    if kind is str:
        if _NUMERIC_TEXT.fullmatch(value) is None:
            return None
        if _INTEGER_TEXT.fullmatch(value) is not None:
            try:
                return int(value)
            except ValueError:  # beyond int()'s digit limit; a float still orders correctly
                return float(value)
        return float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None


def same(actual: Any, expected: Any) -> bool:
    """Equality by JSON type, with decimal strings standing in for numbers where a number is expected."""
    if expected is None or isinstance(expected, bool):
        return actual is expected
    if isinstance(expected, int | float):
        number = as_number(actual)
        return number is not None and number == expected
    if isinstance(expected, str):
        return isinstance(actual, str) and actual == expected
    if isinstance(expected, list):
        return (
            isinstance(actual, list | tuple)
            and len(actual) == len(expected)
            and all(same(item, wanted) for item, wanted in zip(actual, expected, strict=True))
        )
    if isinstance(expected, dict):
        return (
            isinstance(actual, Mapping)
            and len(actual) == len(expected)
            and all(key in actual and same(actual[key], wanted) for key, wanted in expected.items())
        )
    return False


def _step(container: Any, key: str, index: int | None) -> Any:
    if isinstance(container, Mapping):
        return container.get(key, MISSING)
    if index is not None and isinstance(container, list | tuple):
        return container[index] if index < len(container) else MISSING
    return MISSING


def _negation(test: Test) -> Test:
    return lambda value: not test(value)


def _equality_test(expected: Any) -> Test:
    if isinstance(expected, str):
        return lambda value: isinstance(value, str) and value == expected
    if isinstance(expected, int | float) and not isinstance(expected, bool):

        def equals_number(value: Any) -> bool:
            number = as_number(value)
            return number is not None and number == expected

        return equals_number
    return lambda value: same(value, expected)


def _order_test(operator: str, bound: Any) -> Test:
    if isinstance(bound, bool) or not isinstance(bound, int | float):
        meant = as_number(bound) if isinstance(bound, str) else None
        hint = (
            f"; write it as a plain number such as {meant!r} "
            "(quoted numbers, and in YAML forms like 1e3, are text)"
            if meant is not None and math.isfinite(meant)
            else ""
        )
        raise ValueError(f"'{operator}' needs a number, got {describe_value(bound)}{hint}")
    if not math.isfinite(bound):
        # The document refuses these; a policy built in code must not compare against them either.
        raise ValueError(f"'{operator}' needs a finite number, got {bound!r}")
    if operator == "gt":

        def greater(value: Any) -> bool:
            number = as_number(value)
            return number is not None and number > bound

        return greater
    if operator == "gte":

        def greater_or_equal(value: Any) -> bool:
            number = as_number(value)
            return number is not None and number >= bound

        return greater_or_equal
    if operator == "lt":

        def less(value: Any) -> bool:
            number = as_number(value)
            return number is not None and number < bound

        return less

    def less_or_equal(value: Any) -> bool:
        number = as_number(value)
        return number is not None and number <= bound

    return less_or_equal


def _membership_test(options: list[Any]) -> Test:
    strings = frozenset(option for option in options if isinstance(option, str))
    numbers = tuple(
        option for option in options if isinstance(option, int | float) and not isinstance(option, bool)
    )
    others = tuple(
        option for option in options if not isinstance(option, str | int | float) or isinstance(option, bool)
    )

    def is_member(value: Any) -> bool:
        if isinstance(value, str) and value in strings:
            return True
        if numbers:
            number = as_number(value)
            if number is not None and any(number == option for option in numbers):
                return True
        return any(same(value, option) for option in others)

    return is_member


def _containment_test(needle: Any) -> Test:
    def contains(value: Any) -> bool:
        if isinstance(value, str):
            return isinstance(needle, str) and needle in value
        if isinstance(value, list | tuple):
            return any(same(item, needle) for item in value)
        return False

    return contains


def _regex_test(pattern: Any) -> Test:
    if not isinstance(pattern, str):
        raise ValueError(f"'matches' needs a regular expression string, got {describe_value(pattern)}")
    try:
        regex = re.compile(pattern)
    except re.error as error:
        where = f" at position {error.pos}" if error.pos is not None else ""
        raise ValueError(f"invalid regular expression {pattern!r}: {error.msg}{where}") from None
    return lambda value: isinstance(value, str) and regex.fullmatch(value) is not None
