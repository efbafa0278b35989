"""A rule's ``when`` and ``unless`` mappings: argument (or claims) paths, each with its tests."""

from __future__ import annotations

from broker.policy.conditions import OPERATORS, Condition, compile_path, compile_test
from broker.policy.document import (
    Fail,
    Key,
    MappingNode,
    Node,
    ScalarNode,
    SequenceNode,
    describe_node,
    to_python,
)
from broker.policy.schema_fields import suggestion


def parse_conditions(node: Node | None, fail: Fail) -> tuple[Condition, ...]:
    if node is None:
        return ()
    if not isinstance(node, MappingNode) or not node.entries:
        fail(
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
            fail(key, str(error))
            resolve = None
        for operator, operand in _operators(key, test, fail):
            try:
                check = compile_test(operator, to_python(operand))
            except ValueError as error:
                fail(operand, str(error))
                continue
            if resolve is not None:
                conditions.append(Condition(key.name, operator, to_python(operand), resolve, check))
    return tuple(conditions)


def _operators(key: Key, test: Node, fail: Fail) -> list[tuple[str, Node]]:
    if isinstance(test, ScalarNode):
        return [("eq", test)]  # shorthand: "args.side": "SELL" means {eq: "SELL"}
    if isinstance(test, SequenceNode):
        fail(test, f"'{key.name}' needs an operator for a list, e.g. {{in: [...]}} or {{eq: [...]}}")
        return []
    if not test.entries:
        fail(test, f"'{key.name}' has no operator (one of {', '.join(OPERATORS)})")
        return []
    found = []
    for operator, operand in test:
        if operator.name not in OPERATORS:
            fail(
                operator,
                f"unknown operator '{operator.name}'{suggestion(operator.name, OPERATORS)} "
                f"(operators: {', '.join(OPERATORS)})",
            )
            continue
        found.append((operator.name, operand))
    return found
