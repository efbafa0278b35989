"""What a policy document may say, checked key by key and compiled into rules.

Every finding is kept (with the position of the key or value at fault) and all of them are
raised together in one PolicyError. Unknown keys are errors everywhere, with a "did you
mean" hint, because a misspelt ``acton:`` silently ignored would change what the policy does.

This module checks the document as a whole (version, default, risk defaults, definition
changes, hide); the rules are `broker.policy.rule_schema`'s, approval settings
`broker.policy.approval_schema`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from broker.policy.approval_schema import APPROVAL_KEYS, parse_approval
from broker.policy.decision import Action, ApprovalRequirement, Decision
from broker.policy.document import Key, MappingNode, Node, Position, ScalarNode, SequenceNode, describe_node
from broker.policy.patterns import ToolPattern
from broker.policy.problems import PolicyError, PolicyProblem
from broker.policy.risk_defaults import RiskDefault, parse_risk_defaults
from broker.policy.rule_schema import RULE_ACTIONS, RuleCompiler
from broker.policy.rules import CompiledRule, HideEntry
from broker.policy.schema_fields import pattern_text, reject_unknown_keys

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


class _Compiler:
    def __init__(self, source: str, revision: str) -> None:
        self._source = source
        self._revision = revision
        self._problems: list[PolicyProblem] = []

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
        rules = RuleCompiler(self._revision, self._fail).rules(root.get("rules"))
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
        reject_unknown_keys(mapping, allowed, where, self._fail)

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
        return action, parse_approval(body, action, self._fail)

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
            text = pattern_text(item, "hide entry", self._fail)
            if text is None:
                continue
            name = f"hide[{index}] '{text}'"
            decision = Decision(Action.HIDE, name, HIDDEN_REASON, self._revision)
            hides.append(HideEntry(index, name, ToolPattern.compile(text), item.line, decision))
        return tuple(hides)
