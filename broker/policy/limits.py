"""The ``limits`` setting of a rule: spend and count limits per window.

::

    limits:
      - sum: "args.quantity * args.price"   # what one call spends (or ``count: true``)
        max: 50000                          # the window may reach 50000 (``below: N``: stay under N)
        window: 1d                          # a duration
        align: calendar                     # sliding (default) or calendar (UTC-aligned)
        per: agent                          # agent (default), session, tool or global
        counter: notional                   # optional shared name (default: one per rule and limit)
        reason: daily notional is capped    # optional, told to the agent when refused

Measure (exactly one)
    ``sum: <expression>`` spends the value of an arithmetic expression over the call's arguments:
    argument paths (``args.amount``, ``args.order.qty``), decimal numbers, ``+ - *`` and
    parentheses, parsed into a small tree and evaluated by walking it, never by ``eval``
    (broker/policy/amounts.py). ``count: true`` spends ``increment`` (default 1, a positive number) per call.

Amounts
    Every value an expression reads must be a JSON number: a bool, a string (even ``"10"``), a
    null, NaN or an infinity, or a missing argument is refused with `AmountError`, naming the
    path, so an agent cannot slip through by leaving the amount out. The result must not be
    negative (a negative spend would hand budget back). Arithmetic is exact (`Decimal`); the
    ledger counts in *units* of 10^-6 (`UNITS_PER_ONE`), and an amount is rounded up to the
    next unit, so rounding never lets more through than the limit.

Bounds
    ``max: N`` allows a window total up to and including N (PolicyLayer ``lte``); ``below: N``
    keeps it strictly under N (``lt``). Exactly one of them, a number >= 0 with at most six
    decimal places.

Windows
    At most 31 days. ``sliding`` counts what was spent in the last ``window`` seconds. ``calendar`` counts what
    was spent since the start of the current UTC period (the window must divide a day: 1m, 1h,
    1d, 15m, ...), so ``1d`` resets at midnight UTC.

Counters
    What a limit counts is named by its counter and the scope value (`SpendLimit.counter_key`):
    ``per: agent`` one counter per agent (a call without an agent name counts under ``-``),
    ``session`` per MCP session, ``tool`` per tool name, ``global`` one for everyone. Limits
    (in several rules) that name the same ``counter`` share it: each checks its own bound
    against the same spent total. Without ``counter`` a limit counts alone, under
    ``<rule name>#<index>``.

Only allow and require_approval rules may carry limits. Refused with the position of the value
at fault: unknown keys, a missing or doubled measure or bound, a bad expression, window, align,
per or increment.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal

from broker.policy.amounts import (
    DECIMAL_CONTEXT,
    AmountError,
    Binary,
    Expression,
    ExpressionError,
    evaluate,
    expression_text,
    parse_expression,
)
from broker.policy.document import Fail, Key, MappingNode, Node, ScalarNode, SequenceNode, describe_node
from broker.policy.duration import parse_duration

LIMIT_KEYS: Final = (
    "sum",
    "count",
    "increment",
    "max",
    "below",
    "window",
    "align",
    "per",
    "counter",
    "reason",
)
ALIGNS: Final = ("sliding", "calendar")
SCOPES: Final = ("agent", "session", "tool", "global")
UNITS_PER_ONE: Final = 1_000_000
DAY_SECONDS: Final = 86_400
MAX_WINDOW_SECONDS: Final = 31 * DAY_SECONDS
ANONYMOUS: Final = "-"
_SHAPE: Final = 'limits: [{sum: "args.amount", max: 1000, window: 1d}]'

Align = Literal["sliding", "calendar"]
Scope = Literal["agent", "session", "tool", "global"]


@dataclass(frozen=True, slots=True)
class SpendLimit:
    """One compiled limit. `ceiling_units` is the most units a window may hold (``below`` makes it
    one unit less than the bound)."""

    counter: str
    amount: Expression | None
    """The ``sum`` expression; None for ``count``."""
    increment: Decimal
    bound: Decimal
    inclusive: bool
    window_seconds: float
    align: Align = "sliding"
    per: Scope = "agent"
    reason: str | None = None

    @property
    def ceiling_units(self) -> int:
        units = self.bound * UNITS_PER_ONE
        return int(units) if self.inclusive else int(units) - 1

    def units(self, arguments: Mapping[str, object] | None) -> int:
        """What one call spends, in units (rounded up); raises AmountError."""
        value = self.increment if self.amount is None else evaluate(self.amount, arguments)
        if value < 0:
            raise AmountError(f"{self.measure_text()} is negative ({value}): a spend cannot give budget back")
        try:
            return int(
                DECIMAL_CONTEXT.multiply(value, UNITS_PER_ONE).to_integral_value(
                    rounding=decimal.ROUND_CEILING
                )
            )
        except (decimal.InvalidOperation, decimal.Overflow):
            raise AmountError(f"{self.measure_text()} is too large") from None

    def counter_key(self, *, agent: str | None, session: str | None, tool: str) -> str:
        scope = {"agent": agent, "session": session, "tool": tool, "global": ""}[self.per]
        return f"{self.counter}|{self.per}:{scope if scope is not None else ANONYMOUS}"

    def window_start(self, now: float) -> float:
        """Spend at or after this instant counts against the limit."""
        if self.align == "calendar":
            return math.floor(now / self.window_seconds) * self.window_seconds
        return now - self.window_seconds

    def calendar_end(self, now: float) -> float | None:
        """When a calendar window frees all its spend (None for sliding windows)."""
        return self.window_start(now) + self.window_seconds if self.align == "calendar" else None

    def measure_text(self) -> str:
        if self.amount is None:
            return "count" if self.increment == 1 else f"count (+{self.increment} per call)"
        return (
            expression_text(self.amount).removeprefix("(").removesuffix(")")
            if isinstance(self.amount, Binary)
            else expression_text(self.amount)
        )

    def spend_text(self, arguments: Mapping[str, object] | None) -> str:
        """What a call with `arguments` would spend, or why it would be refused: for explain."""
        try:
            units = self.units(arguments)
        except AmountError as exc:
            return f"is refused: {exc}"
        return f"spends {(Decimal(units) / UNITS_PER_ONE).normalize():f}"

    def describe(self) -> str:
        """``sum of args.amount <= 1000 per 1d (calendar, per agent, counter c)``: for explain."""
        operator = "<=" if self.inclusive else "<"
        what = self.measure_text() if self.amount is None else f"sum of {self.measure_text()}"
        return (
            f"{what} {operator} {self.bound} per {_duration_text(self.window_seconds)} "
            f"({self.align}, {'for everyone' if self.per == 'global' else 'per ' + self.per}, counter {self.counter})"
        )


def parse_limits(node: Node, rule_name: str, fail: Fail) -> tuple[SpendLimit, ...] | None:
    """The rule's limits; None after reporting every problem through `fail`."""
    items = (
        node.items if isinstance(node, SequenceNode) else (node,) if isinstance(node, MappingNode) else None
    )
    if not items:
        fail(node, f"limits must be a non-empty list like {_SHAPE}; got {describe_node(node)}")
        return None
    parsed = [_limit(item, f"{rule_name}#{index}", fail) for index, item in enumerate(items)]
    if any(limit is None for limit in parsed):
        return None
    return tuple(limit for limit in parsed if limit is not None)


class _Counted:
    """A `Fail` that counts what it reported, so a parser knows whether its part was sound."""

    def __init__(self, fail: Fail) -> None:
        self._fail = fail
        self.problems = 0

    def __call__(self, at: Node | Key, message: str) -> None:
        self.problems += 1
        self._fail(at, message)

    def unknown_keys(self, node: MappingNode, allowed: tuple[str, ...], where: str) -> None:
        for key, _ in node:
            if key.name not in allowed:
                self(key, f"unknown key '{key.name}' in {where} (keys: {', '.join(allowed)})")


BUDGET_KEYS: Final = ("sum", "count", "increment", "max", "below", "reason")
GRANT_BUDGET_WINDOW: Final = MAX_WINDOW_SECONDS


def parse_budget(node: Node, fail: Fail) -> SpendLimit | None:
    """A grant's ``budget`` (broker/policy/grants.py): a limit without window, scope or counter,
    counted over the grant's whole life under a counter of its own (``grant|<grant id>``)."""
    if not isinstance(node, MappingNode):
        fail(
            node,
            f"grant.budget must be a mapping like {{sum: args.amount, max: 500}}; got {describe_node(node)}",
        )
        return None
    bad = _Counted(fail)
    bad.unknown_keys(node, BUDGET_KEYS, "grant.budget")
    amount, increment = _measure(node, bad)
    bound, inclusive = _bound(node, bad)
    reason = _text(node, "reason", bad)
    if bad.problems or bound is None:
        return None
    return SpendLimit(
        counter="grant",
        amount=amount,
        increment=increment,
        bound=bound,
        inclusive=inclusive,
        window_seconds=GRANT_BUDGET_WINDOW,
        per="global",
        reason=reason,
    )


def _limit(node: Node, default_counter: str, fail: Fail) -> SpendLimit | None:
    if not isinstance(node, MappingNode):
        fail(
            node,
            f"each limit must be a mapping like {{sum: args.amount, max: 100, window: 1d}}; got {describe_node(node)}",
        )
        return None
    bad = _Counted(fail)
    bad.unknown_keys(node, LIMIT_KEYS, "a limit")
    amount, increment = _measure(node, bad)
    bound, inclusive = _bound(node, bad)
    window = _window(node, bad)
    align = _choice(node, "align", ALIGNS, bad)
    per = _choice(node, "per", SCOPES, bad)
    if (
        window is not None
        and align == "calendar"
        and (window != int(window) or DAY_SECONDS % int(window) != 0)
    ):
        bad(
            node.get("window") or node,
            f"a calendar window must divide a day (1m, 1h, 1d, ...), got {window:g}s",
        )
    counter = _text(node, "counter", bad) or default_counter
    reason = _text(node, "reason", bad)
    if bad.problems or bound is None or window is None:
        return None
    return SpendLimit(
        counter=counter,
        amount=amount,
        increment=increment,
        bound=bound,
        inclusive=inclusive,
        window_seconds=window,
        align="calendar" if align == "calendar" else "sliding",
        per=per if per in ("session", "tool", "global") else "agent",  # type: ignore[arg-type]
        reason=reason,
    )


def _measure(node: MappingNode, bad: Fail) -> tuple[Expression | None, Decimal]:
    total, count, increment = node.get("sum"), node.get("count"), node.get("increment")
    if (total is None) == (count is None):
        bad(node, "a limit needs exactly one of 'sum: <expression>' or 'count: true'")
        return None, Decimal(1)
    step = Decimal(1)
    if increment is not None:
        if total is not None:
            bad(increment, "'increment' goes with 'count: true'; a sum spends its expression")
        else:
            parsed = _decimal(increment)
            if parsed is None or parsed <= 0:
                bad(
                    increment, f"increment must be a number greater than zero, got {describe_node(increment)}"
                )
            else:
                step = parsed
    if count is not None:
        if not (isinstance(count, ScalarNode) and count.value is True):
            bad(count, f"count must be true (to count calls), got {describe_node(count)}")
        return None, step
    assert total is not None
    if not (isinstance(total, ScalarNode) and isinstance(total.value, str)):
        bad(total, f'sum must be an expression like "args.quantity * args.price", got {describe_node(total)}')
        return None, step
    try:
        return parse_expression(total.value), step
    except ExpressionError as exc:
        bad(total, f"sum expression {exc}")
        return None, step


def _bound(node: MappingNode, bad: Fail) -> tuple[Decimal | None, bool]:
    most, below = node.get("max"), node.get("below")
    if (most is None) == (below is None):
        bad(node, "a limit needs exactly one of 'max: N' (may reach N) or 'below: N' (stays under N)")
        return None, True
    given = most if most is not None else below
    assert given is not None
    value = _decimal(given)
    name = "max" if most is not None else "below"
    if value is None or value < 0:
        bad(given, f"{name} must be a number of at least 0, got {describe_node(given)}")
        return None, True
    if value * UNITS_PER_ONE != int(value * UNITS_PER_ONE):
        bad(given, f"{name} may have at most 6 decimal places, got {value}")
        return None, True
    if most is None and value == 0:
        bad(given, "below: 0 would refuse every call; use action: deny")
        return None, True
    return value, most is not None


def _window(node: MappingNode, bad: Fail) -> float | None:
    window = node.get("window")
    if window is None:
        bad(node, "a limit needs 'window' (a duration like 1h or 1d)")
        return None
    try:
        seconds = parse_duration(window.value if isinstance(window, ScalarNode) else None)
    except ValueError as exc:
        bad(window, f"window {exc}")
        return None
    if seconds > MAX_WINDOW_SECONDS:
        # The ledgers keep spend for 32 days (broker.store.spend.DEFAULT_RETENTION_SECONDS).
        bad(window, f"window may be at most 31 days, got {_duration_text(seconds)}")
        return None
    return seconds


def _choice(node: MappingNode, name: str, choices: tuple[str, ...], bad: Fail) -> str:
    given = node.get(name)
    if given is None:
        return choices[0]
    if isinstance(given, ScalarNode) and given.value in choices:
        return str(given.value)
    bad(given, f"{name} must be one of {', '.join(choices)}, got {describe_node(given)}")
    return choices[0]


def _text(node: MappingNode, name: str, bad: Fail) -> str | None:
    given = node.get(name)
    if given is None:
        return None
    if isinstance(given, ScalarNode) and isinstance(given.value, str) and given.value.strip():
        return given.value.strip()
    bad(given, f"{name} must be non-empty text, got {describe_node(given)}")
    return None


def _decimal(node: Node) -> Decimal | None:
    value = node.value if isinstance(node, ScalarNode) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return Decimal(str(value)) if isinstance(value, float) else Decimal(value)


def limits_json(limits: tuple[SpendLimit, ...]) -> list[dict[str, object]]:
    return [
        {
            "counter": limit.counter,
            "sum": None if limit.amount is None else limit.measure_text(),
            "count": limit.amount is None,
            "increment": str(limit.increment),
            "max" if limit.inclusive else "below": str(limit.bound),
            "window": limit.window_seconds,
            "align": limit.align,
            "per": limit.per,
            "reason": limit.reason,
        }
        for limit in limits
    ]


def _duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
