"""PolicyLayer's hosted JSON policy, compiled into a native policy document.

Shape (policylayer.com/docs/writing-policies)::

    {"version": "1", "default": "deny", "hide": ["delete_account"],
     "all_tools": {"limits": [...]},
     "tools": {"create_charge": {"require": [...], "deny_if": [...], "limits": [...]}}}

* ``tools.<name>: {}`` allows the tool (what lists it under ``default: deny``);
* ``require``: conditions (``path``/``op``/``value`` over ``args.``) that must all hold, else
  the call is denied: a native ``deny`` ``unless`` them;
* ``deny_if``: entries ``{conditions, on_deny}``, each denying when all its conditions hold:
  a native ``deny`` ``when`` them (a condition on a missing argument fails, so it does not
  deny; see `common.native_tests`);
* ``limits`` and ``all_tools.limits``: ``{counter, window, max, scope}`` call counts per
  calendar-aligned UTC window, reserved when the call is allowed and rolled back when the
  upstream call fails. ``scope: grant`` (the default) counts per agent, ``global`` for all.

As with Intercept, the ``all_tools`` limits ride on every listed tool's allow rule and, under
``default: allow``, on an allow rule for ``"*"``.
"""

from __future__ import annotations

from typing import Final

from broker.policy.document import MappingNode, Node, ScalarNode, describe_node
from broker.policy.formats.common import (
    Problems,
    count_limit,
    mapping,
    native_tests,
    read_condition,
    scalar,
    sequence,
    window,
)

TOP_LEVEL_KEYS: Final = ("version", "default", "hide", "all_tools", "tools")
TOOL_KEYS: Final = ("require", "deny_if", "limits")
DENY_IF_KEYS: Final = ("conditions", "on_deny")
LIMIT_KEYS: Final = ("counter", "window", "max", "scope")
SCOPES: Final = {"grant": "agent", "agent": "agent", "global": "global", "tool": "tool"}


def translate_hosted(root: Node, *, source: str) -> tuple[MappingNode, Problems]:
    """The native document and the problems found on the way (positions in `source`)."""
    assert isinstance(root, MappingNode)
    problems = Problems(source)
    problems.unknown_keys(root, TOP_LEVEL_KEYS, "at the top level of a PolicyLayer policy")
    default_node = root.get("default")
    if default_node is None:
        problems.fail(root, 'a PolicyLayer policy needs "default": "allow" or "deny"')
    all_tools = root.get("all_tools")
    shared: list[Node] = []
    if all_tools is not None:
        if isinstance(all_tools, MappingNode):
            problems.unknown_keys(all_tools, ("limits",), "in all_tools")
            shared = _limits(all_tools.get("limits"), "_all_tools", problems)
        else:
            problems.fail(
                all_tools, f"all_tools must be a mapping with 'limits', got {describe_node(all_tools)}"
            )
    tools = root.get("tools")
    rules: list[Node] = []
    if tools is not None and not isinstance(tools, MappingNode):
        problems.fail(tools, f"tools must be a mapping of tool name to rules, got {describe_node(tools)}")
    elif tools is not None:
        for tool_key, body in tools:
            rules += _tool(tool_key.name, body, shared, problems)
    if isinstance(default_node, ScalarNode) and default_node.value == "allow" and shared:
        rules.append(_allow("*", root, shared))
    entries: list[tuple[str, Node]] = [("version", root.get("version") or scalar(None, root))]
    # An unknown default goes through as written: the native compiler reports it once.
    entries.append(("default", default_node or scalar("deny", root)))
    hide = root.get("hide")
    if hide is not None:
        entries.append(("hide", hide))
    entries.append(("rules", sequence(rules, tools or root)))
    return mapping(entries, root), problems


def _tool(tool: str, body: Node, shared: list[Node], problems: Problems) -> list[Node]:
    if not isinstance(body, MappingNode):
        problems.fail(
            body, f"tool '{tool}' must be a mapping (use {{}} to allow it), got {describe_node(body)}"
        )
        return []
    problems.unknown_keys(body, TOOL_KEYS, f"for tool '{tool}'")
    out: list[Node] = []
    required = [
        c
        for item in problems.items(body.get("require"), "require")
        if (c := read_condition(item, problems, state_allowed=False)) is not None
    ]
    if required:
        at = body.get("require") or body
        out.append(
            mapping(
                [
                    ("tool", scalar(tool, at)),
                    ("id", scalar(f"{tool} / require", at)),
                    ("action", scalar("deny", at)),
                    ("reason", scalar(f"the call to {tool} does not meet its requirements", at)),
                    ("unless", native_tests(required)),
                ],
                at,
            )
        )
    for index, item in enumerate(problems.items(body.get("deny_if"), "deny_if")):
        if not isinstance(item, MappingNode):
            problems.fail(
                item, f"deny_if[{index}] must be a mapping with conditions, got {describe_node(item)}"
            )
            continue
        problems.unknown_keys(item, DENY_IF_KEYS, f"in deny_if[{index}]")
        written = problems.items(item.get("conditions"), "conditions")
        conditions = [c for entry in written if (c := read_condition(entry, problems, state_allowed=False))]
        if not written:
            problems.fail(
                item.get("conditions") or item, f"deny_if[{index}] must have at least one condition"
            )
        if not conditions:
            continue
        reason = (
            problems.text(item.get("on_deny"), "on_deny", item) if item.get("on_deny") is not None else None
        )
        out.append(
            mapping(
                [
                    ("tool", scalar(tool, item)),
                    ("id", scalar(f"{tool} / deny_if[{index}]", item)),
                    ("action", scalar("deny", item)),
                    ("reason", scalar(reason or f"denied by deny_if[{index}] of {tool}", item)),
                    ("when", native_tests(conditions)),
                ],
                item,
            )
        )
    own = _limits(body.get("limits"), tool, problems)
    out.append(_allow(tool, body, own + shared))
    return out


def _allow(tool: str, at: Node, limits: list[Node]) -> MappingNode:
    entries: list[tuple[str, Node]] = [
        ("tool", scalar(tool, at)),
        ("id", scalar(f"{tool} / allowed", at)),
        ("action", scalar("allow", at)),
    ]
    if limits:
        entries.append(("limits", sequence(limits, at)))
    return mapping(entries, at)


def _limits(node: Node | None, owner: str, problems: Problems) -> list[Node]:
    out: list[Node] = []
    for index, item in enumerate(problems.items(node, "limits")):
        if not isinstance(item, MappingNode):
            problems.fail(item, f"limits[{index}] must be a mapping, got {describe_node(item)}")
            continue
        problems.unknown_keys(item, LIMIT_KEYS, f"in limits[{index}]")
        counter = problems.text(item.get("counter"), "counter", item)
        native_window = window(item.get("window"), "window", item, problems)
        most = item.get("max")
        if most is None:
            problems.fail(item, f"limits[{index}] is missing 'max'")
        scope_node = item.get("scope")
        scope = (
            "grant"
            if scope_node is None
            else scope_node.value
            if isinstance(scope_node, ScalarNode)
            else None
        )
        if scope not in SCOPES:
            assert scope_node is not None
            problems.fail(
                scope_node, f"scope must be one of {', '.join(SCOPES)}, got {describe_node(scope_node)}"
            )
            continue
        if counter is None or native_window is None or most is None:
            continue
        out.append(
            count_limit(
                at=item,
                bound=("max", most),
                window_text=native_window,
                per=SCOPES[str(scope)],
                counter=f"{owner}.{counter}",
                reason=f"limit '{counter}' reached ({describe_node(most)} per {item.get('window').value})"  # type: ignore[union-attr]
                if isinstance(most, ScalarNode)
                else None,
            )
        )
    return out
