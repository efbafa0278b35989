"""Reading the untrusted parts of a ``tools/list`` entry: words, description text, argument names.

Everything here is bounded, because a hostile server controls the sizes: a description is
read only to `MAX_DESCRIPTION_CHARS` (the telling phrases come early), and arguments only
to `MAX_SCHEMA_DEPTH` (deeper ones are options of options and say little about the tool).
Malformed parts are noted and skipped, never raised.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final

# Splits snake_case, kebab-case, dotted and camelCase: getAPIKey -> get API Key, transferERC20 -> ERC20.
_WORD: Final = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z0-9]+|[A-Z]+[0-9]*")
MAX_SCHEMA_DEPTH: Final = 2
MAX_DESCRIPTION_CHARS: Final = 4096


def words(text: str) -> list[str]:
    """The lower-case words of an identifier or sentence, in order."""
    return [word.lower() for word in _WORD.findall(text)]


def description_text(definition: Mapping[str, Any], notes: list[str]) -> str:
    """Description and titles, lower-cased, each cut to `MAX_DESCRIPTION_CHARS`."""
    texts = []
    for key in ("description", "title"):
        value = definition.get(key)
        if isinstance(value, str):
            texts.append(value[:MAX_DESCRIPTION_CHARS])
        elif value is not None:
            notes.append(f"'{key}' is not a string and was ignored")
    annotations = definition.get("annotations")
    if isinstance(annotations, Mapping) and isinstance(annotations.get("title"), str):
        texts.append(annotations["title"][:MAX_DESCRIPTION_CHARS])
    return "\n".join(texts).lower()


def argument_names(schema: object, notes: list[str]) -> list[str]:
    """Property names of the input schema, as ``snake_case`` words, to `MAX_SCHEMA_DEPTH`."""
    if schema is None:
        return []
    if not isinstance(schema, Mapping):
        notes.append("inputSchema is not an object; arguments were not inspected")
        return []
    names: list[str] = []
    _collect_properties(schema, names, depth=0)
    return names


def _collect_properties(schema: Mapping[str, Any], names: list[str], *, depth: int) -> None:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return
    for key, child in properties.items():
        if not isinstance(key, str):
            continue
        names.append(_argument_name(key))
        if depth + 1 < MAX_SCHEMA_DEPTH and isinstance(child, Mapping):
            _collect_properties(child, names, depth=depth + 1)


@lru_cache(maxsize=4096)
def _argument_name(key: str) -> str:
    return "_".join(words(key))
