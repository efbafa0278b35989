"""PolicyLayer Intercept YAML, compiled into a native policy document.

Intercept (its POLICY.md) runs every rule of a tool, then every ``"*"`` rule; the first rule
that fails denies with its ``on_deny``; counters are reserved only when all pass. The native
engine lets the most specific applicable rule decide, so each listed tool becomes, in order:

* per ``evaluate`` rule with argument conditions: ``deny`` ``unless`` the conditions all hold
  (a missing argument fails a condition, so it denies, as Intercept documents);
* per ``action: deny`` rule: an unconditional ``deny``; rules after it can never matter;
* last, an ``allow`` carrying every counter of the tool's rules and of the ``"*"`` rules as
  native ``limits`` (``count: true`` or ``sum: args.x`` for ``increment_from``; ``lte`` is
  ``max``, ``lt`` is ``below``; calendar-aligned UTC windows; ``per: global``, since an
  Intercept process serves one agent; counters of ``"*"`` rules are shared by name).

The wildcard rules are copied into every listed tool, because a native ``"*"`` rule would be
outranked by the tool's own. Unlisted tools get the ``"*"`` rules under the pattern ``"*"``
when ``default`` is ``allow`` (Intercept's default); under ``default: deny`` they are refused
before any wildcard rule, as Intercept does. Counters may only be bounded by ``lt`` or
``lte`` conditions; anything else is refused with its position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from broker.policy.document import MappingNode, Node, ScalarNode, describe_node
from broker.policy.formats.common import (
    Condition,
    Problems,
    count_limit,
    mapping,
    native_tests,
    read_condition,
    scalar,
    sequence,
    window,
)

TOP_LEVEL_KEYS: Final = ("version", "description", "default", "hide", "tools")
TOOL_KEYS: Final = ("rules",)
RULE_KEYS: Final = ("name", "action", "conditions", "on_deny", "state", "rate_limit")
STATE_KEYS: Final = ("counter", "window", "increment", "increment_from")
WILDCARD: Final = "*"
GLOBAL_SCOPE: Final = "_global"
_RATE: Final = re.compile(r"\s*(\S+)\s*/\s*(\S+)\s*")


@dataclass
class _Rule:
    name: str
    at: MappingNode
    deny: bool
    reason: str | None
    arguments: list[Condition] = field(default_factory=list)
    limits: list[MappingNode] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Counter:
    name: str
    window: str
    increment: tuple[str, Node]
    at: MappingNode


def translate_intercept(root: Node, *, source: str) -> tuple[MappingNode, Problems]:
    """The native document and the problems found on the way (positions in `source`)."""
    assert isinstance(root, MappingNode)
    problems = Problems(source)
    problems.unknown_keys(root, TOP_LEVEL_KEYS, "at the top level of an Intercept policy")
    default = _default(root.get("default"))
    tools_node = root.get("tools")
    tools: list[tuple[str, MappingNode, list[_Rule]]] = []
    if tools_node is None:
        problems.fail(root, "an Intercept policy needs 'tools'")
    elif not isinstance(tools_node, MappingNode):
        problems.fail(
            tools_node, f"tools must be a mapping of tool name to rules, got {describe_node(tools_node)}"
        )
    else:
        for tool_key, body in tools_node:
            tools.append(
                (
                    tool_key.name,
                    _as_mapping(body, tool_key.name, problems),
                    _rules(tool_key.name, body, problems),
                )
            )
    wildcard = next((rules for name, _, rules in tools if name == WILDCARD), [])
    native_rules: list[Node] = []
    for name, at, rules in tools:
        if name != WILDCARD:
            native_rules += _emit(
                name, at, [(name, rule) for rule in rules] + [(WILDCARD, r) for r in wildcard]
            )
    if default == "allow":
        anchor = next((at for name, at, _ in tools if name == WILDCARD), root)
        native_rules += _emit(WILDCARD, anchor, [(WILDCARD, rule) for rule in wildcard])
    entries: list[tuple[str, Node]] = [("version", root.get("version") or scalar(None, root))]
    entries.append(("default", root.get("default") or scalar(default, root)))
    hide = root.get("hide")
    if hide is not None:
        entries.append(("hide", hide))
    entries.append(("rules", sequence(native_rules, tools_node or root)))
    return mapping(entries, root), problems


def _default(node: Node | None) -> str:
    """Intercept's default is allow; an unknown value goes through to the native compiler,
    which reports it (and until fixed nothing loads, so treating it as deny here is moot)."""
    if node is None:
        return "allow"
    return "allow" if isinstance(node, ScalarNode) and node.value == "allow" else "deny"


def _as_mapping(body: Node, tool: str, problems: Problems) -> MappingNode:
    if isinstance(body, MappingNode):
        problems.unknown_keys(body, TOOL_KEYS, f"for tool '{tool}'")
        return body
    if not (isinstance(body, ScalarNode) and body.value is None):
        problems.fail(body, f"tool '{tool}' must be a mapping with 'rules', got {describe_node(body)}")
    return MappingNode((), body.line, body.column)


def _rules(tool: str, body: Node, problems: Problems) -> list[_Rule]:
    rules_node = body.get("rules") if isinstance(body, MappingNode) else None
    scope = GLOBAL_SCOPE if tool == WILDCARD else tool
    raw = problems.items(rules_node, f"tools.{tool}.rules")
    counters: dict[str, tuple[int, _Counter]] = {}
    plans: list[tuple[_Rule, list[Condition]]] = []
    for index, node in enumerate(raw):
        if not isinstance(node, MappingNode):
            problems.fail(node, f"rules[{index}] must be a mapping, got {describe_node(node)}")
            continue
        problems.unknown_keys(node, RULE_KEYS, f"in rules[{index}] of tool '{tool}'")
        plan = _rule(tool, scope, index, node, counters, problems)
        if plan is not None:
            plans.append(plan)
    for rule, state_conditions in plans:
        for condition in state_conditions:
            limit = _bound(scope, condition, counters, rule.reason, problems)
            if limit is not None:
                rule.limits.append(limit)
    return [rule for rule, _ in plans]


def _rule(
    tool: str,
    scope: str,
    index: int,
    node: MappingNode,
    counters: dict[str, tuple[int, _Counter]],
    problems: Problems,
) -> tuple[_Rule, list[Condition]] | None:
    name_node = node.get("name")
    if name_node is None:
        problems.fail(node, "rule must have a name")
    name = problems.text(name_node, "name", node) if name_node is not None else None
    reason = problems.text(node.get("on_deny"), "on_deny", node) if node.get("on_deny") is not None else None
    action_node = node.get("action")
    action = (
        action_node.value
        if isinstance(action_node, ScalarNode)
        else "evaluate"
        if action_node is None
        else None
    )
    if action not in ("evaluate", "deny"):
        assert action_node is not None
        problems.fail(action_node, f'action must be "evaluate" or "deny", got {describe_node(action_node)}')
        return None
    rule = _Rule(name or f"rules[{index}]", node, action == "deny", reason)
    conditions_node, rate = node.get("conditions"), node.get("rate_limit")
    if rule.deny:
        if conditions_node is not None:
            problems.fail(conditions_node, "deny rules must not have conditions")
        if rate is not None:
            problems.fail(rate, 'rate_limit cannot be used with action "deny"')
        return rule, []
    if rate is not None:
        if conditions_node is not None or node.get("state") is not None:
            problems.fail(rate, "rate_limit cannot be combined with conditions or state")
            return None
        return _rate_limit(scope, index, rate, rule, counters, problems)
    conditions = [
        condition
        for item in problems.items(conditions_node, "conditions")
        if (condition := read_condition(item, problems, state_allowed=True)) is not None
    ]
    if conditions_node is None or not problems.items(conditions_node, "conditions"):
        problems.fail(conditions_node or node, "evaluate rules must have at least one condition")
        return None
    state = node.get("state")
    if state is not None:
        _declare(index, _counter(state, problems), counters, problems)
    rule.arguments = [c for c in conditions if c.path.startswith("args.")]
    return rule, [c for c in conditions if c.path.startswith("state.")]


def _rate_limit(
    scope: str,
    index: int,
    rate: Node,
    rule: _Rule,
    counters: dict[str, tuple[int, _Counter]],
    problems: Problems,
) -> tuple[_Rule, list[Condition]] | None:
    text = rate.value if isinstance(rate, ScalarNode) and isinstance(rate.value, str) else ""
    match = _RATE.fullmatch(text)
    count_text, window_text = match.groups() if match else (text, "")
    if not count_text.isdigit() or int(count_text) <= 0:
        problems.fail(rate, f'rate_limit count must be a positive integer, got "{count_text}"')
        return None
    native_window = window(scalar(window_text, rate), "rate_limit window", rate, problems)
    if native_window is None:
        return None
    counter = _Counter(f"_rate_{window_text}", native_window, ("count", scalar(True, rate)), rule.at)
    if not _declare(index, counter, counters, problems):
        return None
    reason = rule.reason or f"Rate limit of {count_text} per {window_text} reached. Try again later."
    rule.limits.append(
        count_limit(
            at=rate,
            bound=("max", scalar(int(count_text), rate)),
            window_text=native_window,
            per="global",
            counter=f"{scope}.{counter.name}",
            reason=reason,
        )
    )
    return rule, []


def _counter(node: Node, problems: Problems) -> _Counter | None:
    if not isinstance(node, MappingNode):
        problems.fail(node, f"state must be a mapping with counter and window, got {describe_node(node)}")
        return None
    problems.unknown_keys(node, STATE_KEYS, "in state")
    name_node = node.get("counter")
    name = name_node.value if isinstance(name_node, ScalarNode) and isinstance(name_node.value, str) else ""
    if not name.strip():
        problems.fail(name_node or node, "counter must not be empty")
    native_window = window(node.get("window"), "window", node, problems)
    source = node.get("increment_from")
    increment: tuple[str, Node] = ("count", scalar(True, node))
    if source is not None:
        path = source.value if isinstance(source, ScalarNode) and isinstance(source.value, str) else ""
        if not path.startswith("args."):
            problems.fail(source, f'increment_from must start with "args.", got {describe_node(source)}')
            return None
        increment = ("sum", source)
    elif node.get("increment") is not None:
        step = node.get("increment")
        assert step is not None
        increment = ("increment", step)
    if not name.strip() or native_window is None:
        return None
    return _Counter(name, native_window, increment, node)


def _declare(
    index: int, counter: _Counter | None, counters: dict[str, tuple[int, _Counter]], problems: Problems
) -> bool:
    if counter is None:
        return False
    earlier = counters.setdefault(counter.name, (index, counter))
    if earlier[1] is not counter:
        problems.fail(
            counter.at, f'duplicate state counter "{counter.name}" (also used by rules[{earlier[0]}])'
        )
        return False
    return True


def _bound(
    scope: str,
    condition: Condition,
    counters: dict[str, tuple[int, _Counter]],
    reason: str | None,
    problems: Problems,
) -> MappingNode | None:
    _, _, rest = condition.path.partition(".")
    counter_scope, _, name = rest.partition(".")
    found = counters.get(name) if counter_scope == scope else None
    if found is None:
        problems.fail(
            condition.path_node,
            f"condition references {condition.path} but no matching state block found"
            + (f" (counters of this tool are state.{scope}.<counter>)" if counter_scope != scope else ""),
        )
    if condition.op not in ("lt", "lte"):
        problems.fail(
            condition.at,
            f'a counter can only be bounded with "lt" or "lte" here, got "{condition.op}"; '
            "write the limit in the native format instead",
        )
    if found is None or condition.op not in ("lt", "lte"):
        return None
    counter = found[1]
    kind, value = counter.increment
    measure = (
        [("count", scalar(True, value)), ("increment", value)] if kind == "increment" else [(kind, value)]
    )
    entries: list[tuple[str, Node]] = [
        *measure,
        ("max" if condition.op == "lte" else "below", condition.value),
    ]
    entries += [
        ("window", scalar(counter.window, condition.at)),
        ("align", scalar("calendar", condition.at)),
        ("per", scalar("global", condition.at)),
        ("counter", scalar(f"{scope}.{name}", condition.at)),
    ]
    if reason is not None:
        entries.append(("reason", scalar(reason, condition.at)))
    return mapping(entries, condition.at)


def _emit(tool: str, at: Node, rules: list[tuple[str, _Rule]]) -> list[Node]:
    out: list[Node] = []
    limits: list[Node] = []
    used: set[str] = set()
    for owner, rule in rules:
        rule_id = _unique(
            f"{tool} / {rule.name}" if owner == tool else f"{tool} / {owner} / {rule.name}", used
        )
        entries: list[tuple[str, Node]] = [("tool", scalar(tool, rule.at)), ("id", scalar(rule_id, rule.at))]
        entries.append(("action", scalar("deny", rule.at)))
        if rule.reason is not None:
            entries.append(("reason", scalar(rule.reason, rule.at)))
        if rule.deny:
            if rule.reason is None:
                entries.append(("reason", scalar(f'denied by rule "{rule.name}"', rule.at)))
            out.append(mapping(entries, rule.at))
            return out  # an unconditional deny outranks everything after it
        if rule.arguments:
            if rule.reason is None:
                entries.append(("reason", scalar(f'denied by rule "{rule.name}"', rule.at)))
            out.append(mapping([*entries, ("unless", native_tests(rule.arguments))], rule.at))
        limits += rule.limits
    allow: list[tuple[str, Node]] = [
        ("tool", scalar(tool, at)),
        ("id", scalar(_unique(f"{tool} / allowed", used), at)),
    ]
    allow.append(("action", scalar("allow", at)))
    if limits:
        allow.append(("limits", sequence(limits, at)))
    out.append(mapping(allow, at))
    return out


def _unique(name: str, used: set[str]) -> str:
    candidate, number = name, 2
    while candidate in used:
        candidate, number = f"{name} ({number})", number + 1
    used.add(candidate)
    return candidate
