"""Is an upstream's ``tools/call`` answer a CallToolResult of the protocol version it speaks?

The broker passes results on untouched, so a malformed one would reach the agent, whose MCP
client then fails to parse it (and a held call would be recorded ``completed``). The gateway
asks `tool_result_problem` about every result before passing it on; ``None`` means it may go.

What is checked, from the published schemas (``schema/<version>/schema.json``):

* ``content`` is required in every version and must be an array; each block is an object
  whose ``type`` the version knows, with that type's required fields as strings:

  ======================  ===========================  ===================================
  type                    required                     versions
  ======================  ===========================  ===================================
  ``text``                ``text``                     all
  ``image``               ``data``, ``mimeType``       all
  ``audio``               ``data``, ``mimeType``       2025-03-26 and later
  ``resource_link``       ``uri``, ``name``            2025-06-18 and later
  ``resource``            ``resource``: an object      all
                          with ``uri`` and a ``text``
                          or a ``blob``
  ======================  ===========================  ===================================

  A block's ``annotations`` and ``_meta``, when present, must be objects.
* ``isError`` when present is a boolean and ``_meta`` an object. ``structuredContent`` when
  present is an object in 2025-06-18 and 2025-11-25 (where it was introduced), any JSON value
  in 2026-07-28, and an unknown key before. ``resultType`` when present is a string, in every
  version: 2026-07-28 defines it, agents of that version may be reading what older upstreams
  send, and the official SDK parses it whatever the version. It may be absent (the gateway
  adds ``"complete"`` for agents that need it).
* ``null`` is not "absent": it fails wherever a type is required, as it does in the official
  SDKs' parsers.
* Unknown keys, anywhere, are allowed: later versions add fields.

Optional fields inside blocks (``title``, ``size``, ``icons``, an annotation's ``priority``)
are not checked: the point is what every client must be able to read, not a full schema check.
A version this module does not know (or ``None``, when nobody knows) is checked as the newest.

The problem comes back as one short sentence naming the first thing wrong, with its path, such
as ``content[2].text must be a string, got number``. It never quotes the upstream's values
beyond an unknown ``type`` (shortened), so it is safe to show and to store in the audit log.

Cost: hand-written ``type(x) is ...`` checks, no pydantic, because this runs on every allowed
call. Measured with ``python bench/result_shape.py`` on the shared, loaded 2-core VM (runs
vary by half): about 0.6 µs for the demo exchange's ticker result (one text block and
structuredContent), 2-3 µs for five blocks of every kind, 0.25 µs per further text block. The
SDK's pydantic ``CallToolResult.model_validate`` takes 4 µs and 20-40 µs for the same results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from mcp_types.version import LATEST_PROTOCOL_VERSION

_ABSENT: Final = object()

BlockCheck = Callable[[dict[str, Any]], str | None]


def tool_result_problem(result: Mapping[str, Any], version: str | None) -> str | None:
    """What is wrong with `result` as a CallToolResult of protocol `version`, or None if nothing."""
    rules = _RULES.get(version) if version is not None else None
    if rules is None:
        rules = _NEWEST
    content = result.get("content", _ABSENT)
    if type(content) is not list:
        return _wrong("content", "an array", content)
    blocks = rules.blocks
    for index, block in enumerate(content):
        if type(block) is not dict:
            return _wrong(f"content[{index}]", "an object", block)
        kind = block.get("type", _ABSENT)
        check = blocks.get(kind) if type(kind) is str else None
        if check is None:
            return f"content[{index}].{_unknown_type(kind, rules)}"
        problem = check(block)
        if problem is None and ("annotations" in block or "_meta" in block):
            problem = _optional_objects(block)
        if problem is not None:
            return f"content[{index}].{problem}"
    flag = result.get("isError", _ABSENT)
    if flag is not _ABSENT and type(flag) is not bool:
        return _wrong("isError", "a boolean", flag)
    meta = result.get("_meta", _ABSENT)
    if meta is not _ABSENT and type(meta) is not dict:
        return _wrong("_meta", "an object", meta)
    if rules.structured_content_is_object:
        structured = result.get("structuredContent", _ABSENT)
        if structured is not _ABSENT and type(structured) is not dict:
            return _wrong("structuredContent", "an object", structured)
    result_type = result.get("resultType", _ABSENT)
    if result_type is not _ABSENT and type(result_type) is not str:
        return _wrong("resultType", "a string", result_type)
    return None


def json_kind(value: object) -> str:
    """The JSON name of a parsed value's type, as problems name what they got."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _wrong(path: str, expected: str, value: object) -> str:
    if value is _ABSENT:
        return f"{path} is missing"
    return f"{path} must be {expected}, got {json_kind(value)}"


def _string(block: dict[str, Any], key: str, prefix: str = "") -> str | None:
    value = block.get(key, _ABSENT)
    if type(value) is str:
        return None
    return _wrong(prefix + key, "a string", value)


def _optional_objects(block: dict[str, Any]) -> str | None:
    annotations = block.get("annotations", _ABSENT)
    if annotations is not _ABSENT and type(annotations) is not dict:
        return _wrong("annotations", "an object", annotations)
    meta = block.get("_meta", _ABSENT)
    if meta is not _ABSENT and type(meta) is not dict:
        return _wrong("_meta", "an object", meta)
    return None


def _text(block: dict[str, Any]) -> str | None:
    return _string(block, "text")


def _binary(block: dict[str, Any]) -> str | None:
    return _string(block, "data") or _string(block, "mimeType")


def _resource_link(block: dict[str, Any]) -> str | None:
    return _string(block, "uri") or _string(block, "name")


def _resource(block: dict[str, Any]) -> str | None:
    resource = block.get("resource", _ABSENT)
    if type(resource) is not dict:
        return _wrong("resource", "an object", resource)
    problem = _string(resource, "uri", "resource.")
    if problem is not None:
        return problem
    text = resource.get("text", _ABSENT)
    if type(text) is str:
        return None
    blob = resource.get("blob", _ABSENT)
    if type(blob) is str:
        return None
    if text is not _ABSENT:
        return _wrong("resource.text", "a string", text)
    if blob is not _ABSENT:
        return _wrong("resource.blob", "a string", blob)
    return "resource must have a text or a blob"


def _unknown_type(kind: object, rules: _Rules) -> str:
    known = ", ".join(rules.blocks)
    if kind is _ABSENT:
        return f"type is missing (one of {known})"
    if type(kind) is not str:
        return f"type must be a string, got {json_kind(kind)}"
    shown = kind if len(kind) <= 40 else kind[:40] + "…"
    return f"type {shown!r} is not a content type of protocol {rules.version} ({known})"


@dataclass(frozen=True, slots=True)
class _Rules:
    version: str
    blocks: Mapping[str, BlockCheck]
    structured_content_is_object: bool = False


_BLOCKS_2024: dict[str, BlockCheck] = {"text": _text, "image": _binary, "resource": _resource}
_BLOCKS_2025_03: dict[str, BlockCheck] = {
    "text": _text,
    "image": _binary,
    "audio": _binary,
    "resource": _resource,
}
_BLOCKS_2025_06: dict[str, BlockCheck] = {
    "text": _text,
    "image": _binary,
    "audio": _binary,
    "resource_link": _resource_link,
    "resource": _resource,
}
_RULES: Final[dict[str, _Rules]] = {
    "2024-11-05": _Rules("2024-11-05", _BLOCKS_2024),
    "2025-03-26": _Rules("2025-03-26", _BLOCKS_2025_03),
    "2025-06-18": _Rules("2025-06-18", _BLOCKS_2025_06, structured_content_is_object=True),
    "2025-11-25": _Rules("2025-11-25", _BLOCKS_2025_06, structured_content_is_object=True),
    "2026-07-28": _Rules("2026-07-28", _BLOCKS_2025_06),
}
_NEWEST: Final = _RULES[LATEST_PROTOCOL_VERSION]
