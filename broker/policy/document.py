"""Policy text -> a tree of nodes that remember where they came from.

Both formats end up in the same tree, so validation can point at a line and column
whichever one the operator wrote:

* Text that is valid JSON is read as JSON, with JSON's number and string rules (YAML 1.1
  would read ``1e3`` as a string and chokes on tab indentation).
* A source named ``*.json`` must be valid JSON; its syntax errors carry JSON's line/column.
* Anything else is read as YAML. Text that starts like JSON (``{`` or ``[``) but is neither
  valid JSON nor valid YAML is reported with the JSON error, because that is what its author
  was writing, unless the source is named ``*.yaml``/``*.yml``.

The tree only holds what JSON can express: string keys (unique within a mapping), and
strings, numbers, booleans and null as scalars. YAML timestamps, binary, custom tags and
the like are reported as problems rather than passed on as Python objects nobody expects.
YAML anchors, aliases and ``<<`` merge keys work.
"""

from __future__ import annotations

import json
import math
import re
import sys
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from broker.policy.problems import PolicyError, PolicyProblem

ScalarValue = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class ScalarNode:
    value: ScalarValue
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class SequenceNode:
    items: tuple[Node, ...]
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class MappingNode:
    entries: tuple[tuple[Key, Node], ...]
    line: int
    column: int

    def get(self, name: str) -> Node | None:
        found = self.entry(name)
        return found[1] if found else None

    def entry(self, name: str) -> tuple[Key, Node] | None:
        for key, value in self.entries:
            if key.name == name:
                return key, value
        return None

    def __iter__(self) -> Iterator[tuple[Key, Node]]:
        return iter(self.entries)


Node = ScalarNode | SequenceNode | MappingNode
Position = Node | Key
"""Where a problem is: a node, or the key that names an entry."""
Fail = Callable[[Position, str], None]
"""Reports one problem at its position; the schema's readers carry on, so a document's problems
are all reported at once."""

# Aliases let a few lines of YAML expand into billions of nodes. A policy with rules for thousands
# of tools has tens of thousands of nodes, far below this.
MAX_NODES = 250_000

_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PLAIN_YAML_TAGS = frozenset("tag:yaml.org,2002:" + name for name in ("str", "int", "float", "bool", "null"))
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_JSON_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def describe_value(value: object) -> str:
    """How a value reads in an error message: in policy-file terms, not Python's."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {json.dumps(value, ensure_ascii=False)}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def describe_node(node: Node) -> str:
    if isinstance(node, ScalarNode):
        return describe_value(node.value)
    return "a list" if isinstance(node, SequenceNode) else "a mapping"


def to_python(node: Node) -> Any:
    """The plain JSON-like value of a node (for condition operands)."""
    if isinstance(node, ScalarNode):
        return node.value
    if isinstance(node, SequenceNode):
        return [to_python(item) for item in node.items]
    return {key.name: to_python(value) for key, value in node.entries}


def parse_document(text: str, *, source: str) -> Node:
    """Parse policy text into a node tree; raises PolicyError with positioned problems."""
    lowered = source.lower()
    json_only = lowered.endswith(".json")
    yaml_named = lowered.endswith((".yaml", ".yml"))
    # JSON does not allow a byte-order mark; a space keeps every column where it was.
    json_text = " " + text[1:] if text.startswith("\ufeff") else text
    looks_like_json = json_text.lstrip(" \t\r\n")[:1] in ("{", "[")
    if json_only or looks_like_json:
        try:
            # Integers are converted (and over-long ones reported with their position) by _JsonTree.
            json.loads(json_text, parse_int=len)
        except json.JSONDecodeError as error:
            json_problem = PolicyProblem(source, error.lineno, error.colno, f"invalid JSON: {error.msg}")
            if json_only:
                raise PolicyError([json_problem]) from None
            if not yaml_named:
                return _parse_yaml_or_report(text, source, json_problem)
        except RecursionError:
            raise PolicyError([PolicyProblem(source, 1, 1, "document is nested too deeply")]) from None
        else:
            return _JsonTree(json_text, source).read()
    return _parse_yaml_or_report(text, source, None)


def _parse_yaml_or_report(text: str, source: str, json_problem: PolicyProblem | None) -> Node:
    try:
        return _YamlTree(text, source).read()
    except PolicyError:
        if json_problem is not None:
            raise PolicyError([json_problem]) from None
        raise


class _LineIndex:
    def __init__(self, text: str) -> None:
        self._starts = [0, *(match.end() for match in re.finditer("\n", text))]

    def position(self, offset: int) -> tuple[int, int]:
        line = bisect_right(self._starts, offset)
        return line, offset - self._starts[line - 1] + 1


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[PolicyProblem] = []

    def add(self, line: int, column: int, message: str) -> None:
        self.found.append(PolicyProblem(self.source, line, column, message))

    def check_duplicates(self, entries: list[tuple[Key, Node]]) -> None:
        first_seen: dict[str, Key] = {}
        for key, _ in entries:
            earlier = first_seen.setdefault(key.name, key)
            if earlier is not key:
                self.add(
                    key.line, key.column, f"duplicate key '{key.name}' (first defined on line {earlier.line})"
                )


class _JsonTree:
    """Walks text that `json.loads` has already accepted, keeping each value's offset."""

    def __init__(self, text: str, source: str) -> None:
        self._text = text
        self._lines = _LineIndex(text)
        self._problems = _Problems(source)
        self._decoder = json.JSONDecoder()

    def read(self) -> Node:
        try:
            node, _ = self._value(self._skip(0))
        except RecursionError:
            raise PolicyError(
                [PolicyProblem(self._problems.source, 1, 1, "document is nested too deeply")]
            ) from None
        if self._problems.found:
            raise PolicyError(self._problems.found)
        return node

    def _skip(self, offset: int) -> int:
        match = _JSON_WHITESPACE.match(self._text, offset)
        return match.end() if match else offset

    def _value(self, offset: int) -> tuple[Node, int]:
        line, column = self._lines.position(offset)
        char = self._text[offset]
        if char == "{":
            return self._object(offset, line, column)
        if char == "[":
            items: list[Node] = []
            offset = self._skip(offset + 1)
            while self._text[offset] != "]":
                item, offset = self._value(offset)
                items.append(item)
                offset = self._after_member(offset)
            return SequenceNode(tuple(items), line, column), offset + 1
        try:
            scalar, end = self._decoder.raw_decode(self._text, offset)
        except ValueError:
            # The text parsed once already, so only an integer too long to convert gets here.
            number = _JSON_NUMBER.match(self._text, offset)
            assert number is not None
            self._problems.add(line, column, _too_many_digits(number.end() - offset))
            return ScalarNode(None, line, column), number.end()
        if type(scalar) is float and not math.isfinite(scalar):
            self._problems.add(line, column, _not_finite(self._text[offset:end]))
            return ScalarNode(None, line, column), end
        return ScalarNode(scalar, line, column), end

    def _object(self, offset: int, line: int, column: int) -> tuple[Node, int]:
        entries: list[tuple[Key, Node]] = []
        offset = self._skip(offset + 1)
        while self._text[offset] != "}":
            key_line, key_column = self._lines.position(offset)
            name, offset = self._decoder.raw_decode(self._text, offset)
            offset = self._skip(self._skip(offset) + 1)  # past the ':'
            value, offset = self._value(offset)
            entries.append((Key(name, key_line, key_column), value))
            offset = self._after_member(offset)
        self._problems.check_duplicates(entries)
        return MappingNode(tuple(entries), line, column), offset + 1

    def _after_member(self, offset: int) -> int:
        offset = self._skip(offset)
        if self._text[offset] == ",":
            offset = self._skip(offset + 1)
        return offset


class _TooManyNodes(Exception):
    pass


class _YamlTree:
    def __init__(self, text: str, source: str) -> None:
        self._text = text
        self._problems = _Problems(source)
        self._constructor = SafeConstructor()
        self._budget = MAX_NODES

    def read(self) -> Node:
        source = self._problems.source
        try:
            root = yaml.compose(self._text, Loader=_YAML_LOADER)
        except yaml.MarkedYAMLError as error:
            raise PolicyError([_marked_problem(source, error)]) from None
        except yaml.reader.ReaderError as error:
            line, column = _LineIndex(self._text).position(error.position)
            raise PolicyError(
                [PolicyProblem(source, line, column, f"invalid YAML: {error.reason}")]
            ) from None
        except yaml.YAMLError as error:
            raise PolicyError([PolicyProblem(source, 1, 1, f"invalid YAML: {error}")]) from None
        except RecursionError:
            raise PolicyError([PolicyProblem(source, 1, 1, "document is nested too deeply")]) from None
        if root is None:
            raise PolicyError([PolicyProblem(source, 1, 1, "policy document is empty")])
        try:
            node = self._convert(root)
        except _TooManyNodes:
            message = f"document expands to more than {MAX_NODES} nodes (runaway YAML aliases?)"
            raise PolicyError([PolicyProblem(source, 1, 1, message)]) from None
        except RecursionError:
            raise PolicyError([PolicyProblem(source, 1, 1, "document is nested too deeply")]) from None
        if self._problems.found:
            raise PolicyError(self._problems.found)
        return node

    def _convert(self, node: yaml.Node) -> Node:
        self._budget -= 1
        if self._budget < 0:
            raise _TooManyNodes
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        if isinstance(node, yaml.ScalarNode):
            return ScalarNode(self._scalar(node), line, column)
        if not node.tag.startswith("tag:yaml.org,2002:"):
            self._problems.add(line, column, f"unsupported YAML tag '{node.tag}'")
        if isinstance(node, yaml.SequenceNode):
            return SequenceNode(tuple(self._convert(item) for item in node.value), line, column)
        assert isinstance(node, yaml.MappingNode)
        return MappingNode(tuple(self._mapping_entries(node)), line, column)

    def _mapping_entries(self, node: yaml.MappingNode) -> list[tuple[Key, Node]]:
        own: list[tuple[Key, Node]] = []
        merged: list[tuple[Key, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.extend(self._merge_source(value_node))
                continue
            key = self._key(key_node)
            value = self._convert(value_node)
            if key is not None:
                own.append((key, value))
        self._problems.check_duplicates(own)
        # Own keys override merged ones, and earlier merge sources override later ones (YAML merge spec).
        taken = {key.name for key, _ in own}
        for key, value in merged:
            if key.name not in taken:
                taken.add(key.name)
                own.append((key, value))
        return own

    def _merge_source(self, node: yaml.Node) -> list[tuple[Key, Node]]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        entries: list[tuple[Key, Node]] = []
        for source in sources:
            if isinstance(source, yaml.MappingNode):
                converted = self._convert(source)
                assert isinstance(converted, MappingNode)
                entries.extend(converted.entries)
            else:
                mark = source.start_mark
                self._problems.add(
                    mark.line + 1, mark.column + 1, "'<<' must merge a mapping or a list of mappings"
                )
        return entries

    def _key(self, node: yaml.Node) -> Key | None:
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        if not isinstance(node, yaml.ScalarNode):
            self._problems.add(line, column, "mapping keys must be strings")
            return None
        value = self._scalar(node)
        if not isinstance(value, str):
            self._problems.add(
                line, column, f"mapping keys must be strings, got {describe_value(value)} (quote it)"
            )
            return None
        return Key(value, line, column)

    def _scalar(self, node: yaml.ScalarNode) -> ScalarValue:
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        if node.tag not in _PLAIN_YAML_TAGS:
            kind = node.tag.removeprefix("tag:yaml.org,2002:")
            self._problems.add(
                line,
                column,
                f"unsupported YAML value of type '{kind}': use a string, number, boolean or null",
            )
            return None
        try:
            value: ScalarValue = self._constructor.construct_object(node)
            if type(value) is int:
                # Hexadecimal, octal and binary integers convert without Python's digit limit, but
                # could then not be printed in a message or an explanation.
                str(value)
        except yaml.MarkedYAMLError as error:
            problem = _marked_problem(self._problems.source, error)
            self._problems.add(problem.line, problem.column, problem.message)
            return None
        except ValueError:
            self._problems.add(line, column, _too_many_digits(len(node.value)))
            return None
        if type(value) is float and not math.isfinite(value):
            self._problems.add(line, column, _not_finite(node.value))
            return None
        return value


def _not_finite(written: str) -> str:
    # An infinite bound makes a condition always or never true, and NaN compares false with
    # everything: either way the rule would not do what it appears to say.
    return f"{written} is not a finite number; policies take finite numbers only"


def _too_many_digits(length: int) -> str:
    return (
        f"number too long ({length} characters): integers are limited to "
        f"{sys.get_int_max_str_digits()} digits"
    )


def _marked_problem(source: str, error: yaml.MarkedYAMLError) -> PolicyProblem:
    mark = error.problem_mark or error.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    message = f"invalid YAML: {error.problem or error.context}"
    if error.problem and error.context:
        context_mark = error.context_mark
        where = f" at line {context_mark.line + 1}, column {context_mark.column + 1}" if context_mark else ""
        message += f" ({error.context}{where})"
    return PolicyProblem(source, line, column, message)
