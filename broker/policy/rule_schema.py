"""The ``rules`` section: each rule checked key by key and compiled into a `CompiledRule`.

Rules come as a list (``- tool: ...``) or as a mapping of tool pattern to rule (or to a bare
action). A rule with any problem is left out of the result, and every problem is reported.
"""

from __future__ import annotations

from typing import Final

from broker.policy.approval_schema import parse_approval
from broker.policy.conditions import PATH_PREFIX
from broker.policy.decision import Action, Decision, RateLimit
from broker.policy.document import (
    Fail,
    Key,
    MappingNode,
    Node,
    Position,
    ScalarNode,
    SequenceNode,
    describe_node,
)
from broker.policy.limits import SpendLimit, parse_limits
from broker.policy.patterns import AgentScope, ToolPattern
from broker.policy.rules import CompiledRule
from broker.policy.schema_fields import (
    duration,
    non_empty_string,
    pattern_text,
    reject_unknown_keys,
    string_list,
    suggestion,
)
from broker.policy.unless import rule_check
from broker.policy.when_schema import parse_conditions

RULE_KEYS: Final = (
    "tool",
    "id",
    "action",
    "reason",
    "agents",
    "when",
    "rate_limit",
    "timeout",
    "on_timeout",
    "approvers",
    "channels",
    "hold_budget",
    "show_first",
    "quorum",
    "escalate",
    "editable",
    "grant",
    "limits",
    "unless",
)
RATE_LIMIT_KEYS: Final = ("max", "window")
RULE_ACTIONS: Final = (Action.ALLOW, Action.DENY, Action.REQUIRE_APPROVAL)
DEFAULT_REASONS: Final = {
    Action.ALLOW: "allowed by policy",
    Action.DENY: "denied by policy",
    Action.REQUIRE_APPROVAL: "approval required by policy",
}


class RuleCompiler:
    def __init__(self, revision: str, fail: Fail) -> None:
        self._revision = revision
        self._report = fail
        self._problems = 0
        self._rule_ids: dict[str, Node] = {}

    def _fail(self, at: Position, message: str) -> None:
        # Counted so a rule knows whether any of its parts failed.
        self._problems += 1
        self._report(at, message)

    def rules(self, node: Node | None) -> tuple[CompiledRule, ...]:
        if node is None or (isinstance(node, ScalarNode) and node.value is None):
            return ()
        rules: list[CompiledRule | None] = []
        if isinstance(node, SequenceNode):
            for index, item in enumerate(node.items):
                if not isinstance(item, MappingNode):
                    self._fail(
                        item,
                        f"rules[{index}] must be a mapping with 'tool' and 'action', "
                        f"got {describe_node(item)}",
                    )
                    continue
                tool = item.entry("tool")
                if tool is None:
                    self._fail(item, f"rules[{index}] is missing 'tool'")
                    rules.append(self._rule(index, item, None, item))
                else:
                    rules.append(self._rule(index, item, pattern_text(tool[1], "tool", self._fail), item))
        elif isinstance(node, MappingNode):
            for index, (key, body) in enumerate(node):
                pattern = pattern_text(key, "tool pattern", self._fail)
                if isinstance(body, ScalarNode) and isinstance(body.value, str):
                    body = MappingNode(
                        ((Key("action", body.line, body.column), body),), body.line, body.column
                    )
                if not isinstance(body, MappingNode):
                    self._fail(
                        body,
                        f"the rule for '{key.name}' must be a mapping or an action, got {describe_node(body)}",
                    )
                    continue
                tool = body.entry("tool")
                if tool is not None:
                    self._fail(tool[0], f"'tool' is already given by the key '{key.name}'; remove it")
                rules.append(self._rule(index, body, pattern, key))
        else:
            self._fail(
                node,
                "rules must be a list of rules (or a mapping of tool pattern to rule), "
                f"got {describe_node(node)}",
            )
        return tuple(rule for rule in rules if rule is not None)

    def _rule(
        self, index: int, body: MappingNode, pattern: str | None, start: Position
    ) -> CompiledRule | None:
        problems_before = self._problems
        reject_unknown_keys(body, RULE_KEYS, f"in rules[{index}]", self._fail)
        rule_id = self._rule_id(body.get("id"))
        action = self._action(index, body)
        reason = self._reason(body.get("reason"))
        agents = self._agents(body.get("agents"))
        conditions = parse_conditions(body.get("when"), self._fail)
        unless = parse_conditions(body.get("unless"), self._fail)
        rate_limit = self._rate_limit(body.entry("rate_limit"), action)
        approval = parse_approval(body, action, self._fail)
        show_first = self._show_first(body.entry("show_first"), action)
        if pattern is None or action is None or self._problems > problems_before:
            return None
        name = rule_id if rule_id is not None else f"rules[{index}] '{pattern}'"
        limits = self._limits(body.entry("limits"), action, name)
        if limits is None:
            return None
        decision = Decision(
            action, name, reason or DEFAULT_REASONS[action], self._revision, rate_limit, approval, limits
        )
        return CompiledRule(
            index=index,
            name=name,
            id=rule_id,
            pattern=ToolPattern.compile(pattern),
            action=action,
            reason=decision.reason,
            agents=agents,
            conditions=conditions,
            rate_limit=rate_limit,
            approval=approval,
            show_first=show_first,
            line=start.line,
            decision=decision,
            check=rule_check(conditions, unless),
            unless=unless,
        )

    def _rule_id(self, node: Node | None) -> str | None:
        if node is None:
            return None
        text = non_empty_string(node, "id", self._fail)
        if text is None:
            return None
        # Decisions name their rule by id; these names already mean the default and the positional names.
        if text == "default" or text.startswith(("rules[", "hide[")):
            self._fail(node, f"rule id '{text}' is reserved: decisions use it for something else")
            return None
        earlier = self._rule_ids.setdefault(text, node)
        if earlier is not node:
            self._fail(node, f"duplicate rule id '{text}' (first used on line {earlier.line})")
        return text

    def _action(self, index: int, body: MappingNode) -> Action | None:
        node = body.get("action")
        if node is None:
            self._fail(body, f"rules[{index}] is missing 'action' (allow, deny or require_approval)")
            return None
        choices = [action.value for action in RULE_ACTIONS]
        if isinstance(node, ScalarNode) and node.value in choices:
            return Action(node.value)
        if isinstance(node, ScalarNode) and node.value == Action.HIDE.value:
            self._fail(node, "'hide' is not a rule action: list the tool under the top-level 'hide' instead")
            return None
        hint = (
            suggestion(node.value, choices)
            if isinstance(node, ScalarNode) and isinstance(node.value, str)
            else ""
        )
        self._fail(node, f"action must be allow, deny or require_approval, got {describe_node(node)}{hint}")
        return None

    def _reason(self, node: Node | None) -> str | None:
        return None if node is None else non_empty_string(node, "reason", self._fail)

    def _agents(self, node: Node | None) -> AgentScope | None:
        if node is None:
            return None
        patterns = string_list(node, "agents", self._fail, allow_empty=False)
        return AgentScope(patterns) if patterns else None

    def _rate_limit(self, entry: tuple[Key, Node] | None, action: Action | None) -> RateLimit | None:
        if entry is None:
            return None
        key, node = entry
        if action is Action.DENY:
            self._fail(
                key, "rate_limit only applies to allow and require_approval rules, and this rule denies"
            )
            return None
        if not isinstance(node, MappingNode):
            self._fail(
                node, f"rate_limit must be a mapping like {{max: 60, window: 60}}, got {describe_node(node)}"
            )
            return None
        reject_unknown_keys(node, RATE_LIMIT_KEYS, "in rate_limit", self._fail)
        max_calls = self._max_calls(node)
        window = duration(node.get("window"), "rate_limit.window", node, self._fail)
        if max_calls is None or window is None:
            return None
        return RateLimit(max_calls=max_calls, window_seconds=window)

    def _limits(
        self, entry: tuple[Key, Node] | None, action: Action, name: str
    ) -> tuple[SpendLimit, ...] | None:
        if entry is None:
            return ()
        if action is Action.DENY:
            self._fail(
                entry[0], "limits only apply to allow and require_approval rules, and this rule denies"
            )
            return None
        return parse_limits(entry[1], name, self._fail)

    def _max_calls(self, rate_limit: MappingNode) -> int | None:
        node = rate_limit.get("max")
        if node is None:
            self._fail(rate_limit, "rate_limit is missing 'max' (calls allowed per window)")
            return None
        value = node.value if isinstance(node, ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self._fail(
                node, f"rate_limit.max must be a whole number greater than zero, got {describe_node(node)}"
            )
            return None
        return value

    def _show_first(self, entry: tuple[Key, Node] | None, action: Action | None) -> tuple[str, ...]:
        """Argument names an approver should read first, before the rest in the agent's order."""
        if entry is None:
            return ()
        key, node = entry
        if action is not None and action is not Action.REQUIRE_APPROVAL:
            self._fail(
                key, f"'show_first' only applies to require_approval rules, and this rule is '{action}'"
            )
            return ()
        names = string_list(node, "show_first", self._fail, allow_empty=True)
        if names is None or not isinstance(node, SequenceNode):
            return ()
        shown: list[str] = []
        for item, name in zip(node.items, names, strict=True):
            # "args.order.qty" is accepted like a `when` path; what is shown first is its argument.
            top = name.removeprefix(PATH_PREFIX).split(".", 1)[0] if name.startswith(PATH_PREFIX) else name
            if not top:
                self._fail(item, f"show_first entry '{name}' names no argument")
            elif top not in shown:
                shown.append(top)
        return tuple(shown)
