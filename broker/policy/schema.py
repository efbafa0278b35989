"""What a policy document may say, checked key by key and compiled into rules.

Every finding is kept (with the position of the key or value at fault) and all of them are
raised together in one PolicyError. Unknown keys are errors everywhere, with a "did you
mean" hint, because a misspelt ``acton:`` silently ignored would change what the policy does.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from broker.policy.conditions import OPERATORS, PATH_PREFIX, Condition, compile_path, compile_test
from broker.policy.decision import Action, ApprovalRequirement, Decision, RateLimit
from broker.policy.document import (
    Key,
    MappingNode,
    Node,
    ScalarNode,
    SequenceNode,
    describe_node,
    to_python,
)
from broker.policy.duration import parse_duration
from broker.policy.edits import parse_editable
from broker.policy.escalation import parse_escalation
from broker.policy.grants import parse_grant
from broker.policy.limits import SpendLimit, parse_limits
from broker.policy.patterns import AgentScope, ToolPattern
from broker.policy.problems import PolicyError, PolicyProblem
from broker.policy.quorum import parse_quorum
from broker.policy.risk_defaults import RiskDefault, parse_risk_defaults
from broker.policy.rules import CompiledRule, HideEntry
from broker.policy.unless import rule_check

SUPPORTED_VERSION: Final = "1"
TOP_LEVEL_KEYS: Final = (
    "version",
    "default",
    "risk_defaults",
    "on_definition_change",
    "on_new_tool",
    "hide",
    "rules",
)
DEFINITION_CHANGE_ACTIONS: Final = (Action.REQUIRE_APPROVAL, Action.HIDE)
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
APPROVAL_KEYS: Final = (
    "timeout",
    "on_timeout",
    "approvers",
    "channels",
    "hold_budget",
    "quorum",
    "escalate",
    "editable",
    "grant",
)
RULE_ACTIONS: Final = (Action.ALLOW, Action.DENY, Action.REQUIRE_APPROVAL)
DEFAULT_REASONS: Final = {
    Action.ALLOW: "allowed by policy",
    Action.DENY: "denied by policy",
    Action.REQUIRE_APPROVAL: "approval required by policy",
}
HIDDEN_REASON: Final = "hidden by policy"


@dataclass(frozen=True, slots=True)
class PolicyParts:
    default: Action
    hides: tuple[HideEntry, ...]
    rules: tuple[CompiledRule, ...]
    default_approval: ApprovalRequirement | None = None
    risk_defaults: Mapping[str, RiskDefault] = field(default_factory=dict)
    on_definition_change: Action = Action.REQUIRE_APPROVAL
    on_new_tool: Action | None = None


def compile_document(root: Node, *, source: str, revision: str) -> PolicyParts:
    """Validate a parsed document and compile it; raises PolicyError listing every problem."""
    return _Compiler(source, revision).compile(root)


Position = Node | Key


class _Compiler:
    def __init__(self, source: str, revision: str) -> None:
        self._source = source
        self._revision = revision
        self._problems: list[PolicyProblem] = []
        self._rule_ids: dict[str, Node] = {}

    def compile(self, root: Node) -> PolicyParts:
        if not isinstance(root, MappingNode):
            self._fail(
                root, f"a policy must be a mapping (with 'version', 'rules', ...), got {describe_node(root)}"
            )
            raise PolicyError(self._problems)
        self._reject_unknown_keys(root, TOP_LEVEL_KEYS, "at the top level")
        self._check_version(root)
        default, default_approval = self._default(root.get("default"))
        risk_defaults = parse_risk_defaults(
            root.get("risk_defaults"), default, self._default_entry, self._fail
        )
        on_change = self._on_definition_change(root.get("on_definition_change"))
        on_new = self._on_new_tool(root.get("on_new_tool"))
        hides = self._hides(root.get("hide"))
        rules = self._rules(root.get("rules"))
        if self._problems:
            raise PolicyError(self._problems)
        return PolicyParts(default, hides, rules, default_approval, risk_defaults, on_change, on_new)

    def _on_definition_change(self, node: Node | None) -> Action:
        """What a tool whose definition changed since it was accepted gets (broker/proxy/pinning.py)."""
        if node is None:
            return Action.REQUIRE_APPROVAL
        choices = [action.value for action in DEFINITION_CHANGE_ACTIONS]
        if isinstance(node, ScalarNode) and node.value in choices:
            return Action(node.value)
        self._fail(node, f"on_definition_change must be require_approval or hide, got {describe_node(node)}")
        return Action.REQUIRE_APPROVAL

    def _on_new_tool(self, node: Node | None) -> Action | None:
        """What a tool no one accepted yet gets; None (``accept``): trusted on first use."""
        if node is None or (isinstance(node, ScalarNode) and node.value == "accept"):
            return None
        choices = [action.value for action in DEFINITION_CHANGE_ACTIONS]
        if isinstance(node, ScalarNode) and node.value in choices:
            return Action(node.value)
        self._fail(node, f"on_new_tool must be accept, require_approval or hide, got {describe_node(node)}")
        return None

    def _fail(self, at: Position, message: str) -> None:
        self._problems.append(PolicyProblem(self._source, at.line, at.column, message))

    def _reject_unknown_keys(self, mapping: MappingNode, allowed: Sequence[str], where: str) -> None:
        for key, _ in mapping:
            if key.name not in allowed:
                self._fail(key, f"unknown key '{key.name}' {where}{_suggestion(key.name, allowed)}")

    def _check_version(self, root: MappingNode) -> None:
        node = root.get("version")
        if node is None:
            self._fail(root, f"missing 'version': add  version: \"{SUPPORTED_VERSION}\"")
        elif isinstance(node, ScalarNode) and node.value == SUPPORTED_VERSION:
            return
        elif isinstance(node, ScalarNode) and isinstance(node.value, str):
            self._fail(
                node,
                f"unsupported policy version '{node.value}': "
                f'this broker reads version "{SUPPORTED_VERSION}"',
            )
        else:
            self._fail(
                node,
                f'version must be the string "{SUPPORTED_VERSION}" (quoted), got {describe_node(node)}; '
                f'write  version: "{SUPPORTED_VERSION}"',
            )

    def _default(self, node: Node | None) -> tuple[Action, ApprovalRequirement | None]:
        if node is None:
            return Action.DENY, None
        found = self._default_entry(node, "default")
        # An invalid default denies: the policy will not load anyway, and nothing else is safe to assume.
        return found if found is not None else (Action.DENY, None)

    def _default_entry(self, node: Node, what: str) -> tuple[Action, ApprovalRequirement | None] | None:
        """An action with its approval settings, written ``require_approval`` or as a mapping
        ``{action: require_approval, timeout: 10m}``; for ``default`` and each ``risk_defaults`` entry."""
        choices = ", ".join(f"'{action.value}'" for action in RULE_ACTIONS)
        if isinstance(node, ScalarNode):
            body = MappingNode(((Key("action", node.line, node.column), node),), node.line, node.column)
        elif isinstance(node, MappingNode):
            body = node
            self._reject_unknown_keys(body, ("action", *APPROVAL_KEYS), f"in {what}")
        else:
            self._fail(
                node, f"{what} must be one of {choices} or a mapping with 'action', got {describe_node(node)}"
            )
            return None
        action_node = body.get("action")
        if action_node is None:
            self._fail(body, f"{what} is missing 'action' ({choices})")
            return None
        if not (isinstance(action_node, ScalarNode) and action_node.value in [a.value for a in RULE_ACTIONS]):
            self._fail(action_node, f"{what} must be one of {choices}, got {describe_node(action_node)}")
            return None
        action = Action(action_node.value)
        return action, self._approval(body, action)

    def _hides(self, node: Node | None) -> tuple[HideEntry, ...]:
        if node is None or (isinstance(node, ScalarNode) and node.value is None):
            return ()
        if not isinstance(node, SequenceNode):
            self._fail(
                node,
                'hide must be a list of tool names or globs, e.g. hide: ["admin_*"]; '
                f"got {describe_node(node)}",
            )
            return ()
        hides = []
        for index, item in enumerate(node.items):
            text = self._pattern_text(item, "hide entry")
            if text is None:
                continue
            name = f"hide[{index}] '{text}'"
            decision = Decision(Action.HIDE, name, HIDDEN_REASON, self._revision)
            hides.append(HideEntry(index, name, ToolPattern.compile(text), item.line, decision))
        return tuple(hides)

    def _pattern_text(self, node: Position, what: str) -> str | None:
        if isinstance(node, Key):
            text = node.name
        elif isinstance(node, ScalarNode) and isinstance(node.value, str):
            text = node.value
        else:
            self._fail(node, f"{what} must be a tool name or glob string, got {describe_node(node)}")
            return None
        if not text.strip():
            self._fail(node, f"{what} must not be empty")
            return None
        if text != text.strip():
            self._fail(node, f"{what} '{text}' has leading or trailing whitespace")
            return None
        return text

    def _rules(self, node: Node | None) -> tuple[CompiledRule, ...]:
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
                    rules.append(self._rule(index, item, self._pattern_text(tool[1], "tool"), item))
        elif isinstance(node, MappingNode):
            for index, (key, body) in enumerate(node):
                pattern = self._pattern_text(key, "tool pattern")
                if isinstance(body, ScalarNode) and isinstance(body.value, str):
                    body = MappingNode(
                        ((Key("action", body.line, body.column), body),), body.line, body.column
                    )
                if not isinstance(body, MappingNode):
                    self._fail(
                        body,
                        f"the rule for '{key.name}' must be a mapping or an action, "
                        f"got {describe_node(body)}",
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
        problems_before = len(self._problems)
        self._reject_unknown_keys(body, RULE_KEYS, f"in rules[{index}]")
        rule_id = self._rule_id(body.get("id"))
        action = self._action(index, body)
        reason = self._reason(body.get("reason"))
        agents = self._agents(body.get("agents"))
        conditions = self._conditions(body.get("when"))
        unless = self._conditions(body.get("unless"))
        rate_limit = self._rate_limit(body.entry("rate_limit"), action)
        approval = self._approval(body, action)
        show_first = self._show_first(body.entry("show_first"), action)
        if pattern is None or action is None or len(self._problems) > problems_before:
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
        text = self._non_empty_string(node, "id")
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
            _suggestion(node.value, choices)
            if isinstance(node, ScalarNode) and isinstance(node.value, str)
            else ""
        )
        self._fail(node, f"action must be allow, deny or require_approval, got {describe_node(node)}{hint}")
        return None

    def _reason(self, node: Node | None) -> str | None:
        return None if node is None else self._non_empty_string(node, "reason")

    def _non_empty_string(self, node: Node, what: str) -> str | None:
        if isinstance(node, ScalarNode) and isinstance(node.value, str) and node.value.strip():
            return node.value
        self._fail(node, f"{what} must be a non-empty string, got {describe_node(node)}")
        return None

    def _string_list(self, node: Node, what: str, *, allow_empty: bool) -> tuple[str, ...] | None:
        if not isinstance(node, SequenceNode):
            example = {"agents": '["trading-bot"]', "show_first": '["to", "subject"]'}.get(what, '["..."]')
            self._fail(node, f"{what} must be a list, e.g. {what}: {example}; got {describe_node(node)}")
            return None
        if not node.items and not allow_empty:
            self._fail(node, f"{what} must not be empty (leave it out to apply to every agent)")
            return None
        values = [self._non_empty_string(item, f"each entry of {what}") for item in node.items]
        strings = [value for value in values if value is not None]
        return tuple(strings) if len(strings) == len(values) else None

    def _agents(self, node: Node | None) -> AgentScope | None:
        if node is None:
            return None
        patterns = self._string_list(node, "agents", allow_empty=False)
        return AgentScope(patterns) if patterns else None

    def _conditions(self, node: Node | None) -> tuple[Condition, ...]:
        if node is None:
            return ()
        if not isinstance(node, MappingNode) or not node.entries:
            self._fail(
                node,
                'when must be a mapping of argument path to test, e.g. when: {"args.quantity": {"gt": 100}}; '
                f"got {describe_node(node)}",
            )
            return ()
        conditions = []
        for key, test in node:
            try:
                resolve = compile_path(key.name)
            except ValueError as error:
                self._fail(key, str(error))
                resolve = None
            for operator, operand in self._operators(key, test):
                try:
                    check = compile_test(operator, to_python(operand))
                except ValueError as error:
                    self._fail(operand, str(error))
                    continue
                if resolve is not None:
                    conditions.append(Condition(key.name, operator, to_python(operand), resolve, check))
        return tuple(conditions)

    def _operators(self, key: Key, test: Node) -> list[tuple[str, Node]]:
        if isinstance(test, ScalarNode):
            return [("eq", test)]  # shorthand: "args.side": "SELL" means {eq: "SELL"}
        if isinstance(test, SequenceNode):
            self._fail(
                test, f"'{key.name}' needs an operator for a list, e.g. {{in: [...]}} or {{eq: [...]}}"
            )
            return []
        if not test.entries:
            self._fail(test, f"'{key.name}' has no operator (one of {', '.join(OPERATORS)})")
            return []
        found = []
        for operator, operand in test:
            if operator.name not in OPERATORS:
                self._fail(
                    operator,
                    f"unknown operator '{operator.name}'{_suggestion(operator.name, OPERATORS)} "
                    f"(operators: {', '.join(OPERATORS)})",
                )
                continue
            found.append((operator.name, operand))
        return found

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
        self._reject_unknown_keys(node, RATE_LIMIT_KEYS, "in rate_limit")
        max_calls = self._max_calls(node)
        window = self._duration(node.get("window"), "rate_limit.window", node)
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

    def _duration(self, node: Node | None, what: str, owner: MappingNode) -> float | None:
        if node is None:
            self._fail(owner, f"missing '{what.rpartition('.')[2]}' ({what}, in seconds or like '1m')")
            return None
        try:
            return parse_duration(node.value if isinstance(node, ScalarNode) else None)
        except ValueError as error:
            self._fail(node, f"{what} {error}")
            return None

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
        names = self._string_list(node, "show_first", allow_empty=True)
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

    def _approval(self, body: MappingNode, action: Action | None) -> ApprovalRequirement | None:
        present = [(key, value) for key, value in body if key.name in APPROVAL_KEYS]
        if action is not Action.REQUIRE_APPROVAL:
            if action is not None:
                for key, _ in present:
                    self._fail(
                        key,
                        f"'{key.name}' only applies to require_approval rules, and this rule is '{action}'",
                    )
            return None
        requirement = ApprovalRequirement()
        timeout, on_timeout = requirement.timeout_seconds, requirement.on_timeout
        approvers, channels = requirement.approvers, requirement.channels
        hold_budget = requirement.hold_budget_seconds
        quorum_node: Node | None = None
        escalate_node: Node | None = None
        editable: tuple[str, ...] = ()
        grant = None
        for key, value in present:
            if key.name == "timeout":
                timeout = self._duration(value, "timeout", body) or timeout
            elif key.name == "hold_budget":
                hold_budget = self._duration(value, "hold_budget", body) or hold_budget
            elif key.name == "on_timeout":
                if isinstance(value, ScalarNode) and value.value == "deny":
                    on_timeout = "deny"
                else:
                    self._fail(
                        value,
                        "on_timeout must be 'deny' (the only choice in policy version 1), "
                        f"got {describe_node(value)}",
                    )
            elif key.name == "approvers":
                approvers = self._string_list(value, "approvers", allow_empty=True) or ()
            elif key.name == "quorum":
                quorum_node = value
            elif key.name == "escalate":
                escalate_node = value
            elif key.name == "editable":
                editable = parse_editable(value, self._fail)
            elif key.name == "grant":
                grant = parse_grant(value, self._fail)
            else:
                channels = self._string_list(value, "channels", allow_empty=True) or ()
        quorum, quorum_from = (
            (1, ()) if quorum_node is None else parse_quorum(quorum_node, approvers, self._fail)
        )
        return ApprovalRequirement(
            timeout_seconds=timeout,
            on_timeout=on_timeout,
            approvers=approvers,
            channels=channels,
            hold_budget_seconds=hold_budget,
            quorum=quorum,
            quorum_from=quorum_from,
            escalation=() if escalate_node is None else parse_escalation(escalate_node, timeout, self._fail),
            editable=editable,
            grant=grant,
        )


def _suggestion(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
