"""Policy text -> positioned node tree: JSON and YAML, and every way the text itself can be wrong."""

from __future__ import annotations

import json

import pytest

from broker.policy import PolicyError
from broker.policy.document import MappingNode, ScalarNode, SequenceNode, parse_document, to_python


def problems(text: str, source: str = "<policy>") -> list[tuple[int, int, str]]:
    with pytest.raises(PolicyError) as caught:
        parse_document(text, source=source)
    return [(problem.line, problem.column, problem.message) for problem in caught.value.problems]


def test_json_nodes_carry_key_and_value_positions() -> None:
    text = '{\n  "version": "1",\n  "rules": [\n    {"tool": "x", "action": "allow"}\n  ]\n}\n'
    root = parse_document(text, source="p.json")
    assert isinstance(root, MappingNode)
    (version_key, version), (rules_key, rules) = root.entries
    assert (version_key.name, version_key.line, version_key.column) == ("version", 2, 3)
    assert isinstance(version, ScalarNode)
    assert (version.value, version.line, version.column) == ("1", 2, 14)
    assert isinstance(rules, SequenceNode)
    assert (rules_key.line, rules.line, rules.column) == (3, 3, 12)
    rule = rules.items[0]
    assert isinstance(rule, MappingNode)
    assert (rule.line, rule.column) == (4, 5)
    action = rule.entry("action")
    assert action is not None
    assert (action[0].line, action[0].column, action[1].column) == (4, 19, 29)
    assert to_python(root) == json.loads(text)


def test_yaml_nodes_carry_key_and_value_positions() -> None:
    text = 'version: "1"\nrules:\n  - tool: x\n    action: allow\n'
    root = parse_document(text, source="p.yaml")
    assert isinstance(root, MappingNode)
    rules = root.get("rules")
    assert isinstance(rules, SequenceNode)
    rule = rules.items[0]
    assert isinstance(rule, MappingNode)
    action = rule.entry("action")
    assert action is not None
    assert (action[0].line, action[0].column, action[1].line, action[1].column) == (4, 5, 4, 13)


def test_json_syntax_error_reports_jsons_own_line_and_column() -> None:
    text = '{\n  "version": "1",\n  "default": "deny"\n  "hide": []\n}\n'
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    assert problems(text, "policy.json") == [
        (expected.value.lineno, expected.value.colno, f"invalid JSON: {expected.value.msg}")
    ]
    assert expected.value.lineno == 4


def test_json_looking_text_that_is_neither_json_nor_yaml_reports_the_json_error() -> None:
    text = '{"version": "1",\n "hide": ["a"\n'
    [(line, _, message)] = problems(text)
    assert message.startswith("invalid JSON:")
    assert line == 3


def test_a_json_source_must_be_json_even_if_it_is_valid_yaml() -> None:
    [(line, column, message)] = problems("version: '1'\n", "seed.json")
    assert (line, column) == (1, 1)
    assert message.startswith("invalid JSON: Expecting value")


def test_yaml_flow_mapping_that_is_not_json_still_loads_from_an_unnamed_source() -> None:
    root = parse_document("{version: '1', hide: [a, b,]}", source="<policy>")
    assert to_python(root) == {"version": "1", "hide": ["a", "b"]}


def test_valid_json_keeps_json_number_semantics_even_in_a_yaml_file() -> None:
    # YAML 1.1 would read 1e3 as the string "1e3".
    root = parse_document('{"a": 1e3, "b": 10, "c": -0.5}', source="policy.yaml")
    assert to_python(root) == {"a": 1000.0, "b": 10, "c": -0.5}


def test_json_indented_with_tabs_loads() -> None:
    root = parse_document('{\n\t"version": "1",\n\t"hide": ["a"]\n}', source="p.json")
    assert isinstance(root, MappingNode)
    assert root.entries[1][0].line == 3
    assert root.entries[1][0].column == 2


def test_byte_order_mark_does_not_shift_json_columns() -> None:
    root = parse_document('\ufeff{"version": "1"}', source="p.json")
    assert isinstance(root, MappingNode)
    assert root.entries[0][0].column == 3
    assert to_python(root) == {"version": "1"}


def test_json_string_escapes_are_decoded() -> None:
    root = parse_document('{"a": "x\\u00e9\\ud83d\\ude00\\n"}', source="p.json")
    assert to_python(root) == {"a": "x\u00e9\U0001f600\n"}


@pytest.mark.parametrize(
    ("text", "source"),
    [
        ('{"version": "1",\n "hide": [],\n "version": "1"}', "p.json"),
        ('version: "1"\nhide: []\nversion: "1"\n', "p.yaml"),
    ],
)
def test_duplicate_keys_are_reported_where_the_second_one_is(text: str, source: str) -> None:
    [(line, _, message)] = problems(text, source)
    assert line == 3
    assert message == "duplicate key 'version' (first defined on line 1)"


def test_yaml_syntax_error_reports_its_line() -> None:
    text = 'version: "1"\nrules:\n  - tool: x\n   action: allow\n'
    [(line, _, message)] = problems(text, "p.yaml")
    assert line == 4
    assert message.startswith("invalid YAML:")


def test_yaml_control_character_is_reported_at_its_position() -> None:
    [(line, column, message)] = problems('version: "1"\nhide: ["a\x01"]\n', "p.yaml")
    assert (line, column) == (2, 10)
    assert "control characters are not allowed" in message


def test_yaml_values_json_cannot_express_are_rejected() -> None:
    found = problems('version: "1"\nwhen: 2024-01-01\nx: !vault secret\n', "p.yaml")
    assert [(line, column) for line, column, _ in found] == [(2, 7), (3, 4)]
    assert "'timestamp'" in found[0][2]
    assert "'!vault'" in found[1][2]


def test_non_string_keys_are_rejected() -> None:
    [(line, column, message)] = problems('version: "1"\non: true\n', "p.yaml")
    assert (line, column) == (2, 1)
    assert message == "mapping keys must be strings, got true (quote it)"


@pytest.mark.parametrize("text", ["", "   \n# only a comment\n"])
def test_empty_document_is_a_problem(text: str) -> None:
    assert problems(text, "p.yaml") == [(1, 1, "policy document is empty")]


def test_several_yaml_documents_are_rejected() -> None:
    [(line, _, message)] = problems('version: "1"\n---\nversion: "1"\n', "p.yaml")
    assert line == 2
    assert "single document" in message


def test_yaml_merge_keys_let_own_keys_override_without_duplicate_errors() -> None:
    text = "base: &approval {timeout: 300, approvers: [alice]}\nrule:\n  <<: *approval\n  timeout: 60\n"
    root = parse_document(text, source="p.yaml")
    assert to_python(root)["rule"] == {"timeout": 60, "approvers": ["alice"]}


def test_alias_bomb_is_refused_not_expanded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    [(_, _, message)] = problems("\n".join(lines) + "\n", "p.yaml")
    assert "runaway YAML aliases" in message


@pytest.mark.parametrize("text", ["[" * 100_000, "[" * 5_000 + "]" * 5_000])
@pytest.mark.parametrize("source", ["p.json", "p.yaml", "<policy>"])
def test_absurd_nesting_is_a_problem_not_a_crash(text: str, source: str) -> None:
    assert problems(text, source) == [(1, 1, "document is nested too deeply")]
