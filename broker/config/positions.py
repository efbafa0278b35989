"""Configuration errors as precise as policy errors: `file:line:col: key.path: problem (did you mean ...?)`.

pydantic reports where in the *data* a problem is (`loc`); this module finds the same place in
the *text* through the YAML node tree (JSON is YAML for this purpose) and, for an unknown key,
suggests the nearest known one.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


def _node_at(root: yaml.Node | None, loc: Sequence[Any], *, key: bool) -> yaml.Node | None:
    """The node for `loc` (its key when `key`, for unknown keys), or the deepest one found."""
    node = root
    for index, step in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            for name, value in node.value:
                if isinstance(name, yaml.ScalarNode) and name.value == str(step):
                    node = name if key and index == len(loc) - 1 else value
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
        else:
            return node
    return node


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model that holds the last step of `loc`, stepping over the names in dict fields
    (``agents.<name>``) and through ``X | None`` annotations."""
    current: type[BaseModel] | None = model
    pending_dict_key = False
    for step in loc[:-1]:
        if current is None:
            return None
        if pending_dict_key:
            pending_dict_key = False
            continue
        field = current.model_fields.get(str(step))
        if field is None:
            return None
        annotation: Any = field.annotation
        options = [annotation, *getattr(annotation, "__args__", ())]
        if any(getattr(option, "__origin__", None) is dict for option in options):
            pending_dict_key = True
            values = [
                getattr(o, "__args__", (None, None))[1]
                for o in options
                if getattr(o, "__origin__", None) is dict
            ]
            options = values
        nested = [o for o in options if isinstance(o, type) and issubclass(o, BaseModel)]
        current = nested[0] if nested else None
    return current


def describe_validation_error(exc: ValidationError, *, text: str, source: str, model: type[BaseModel]) -> str:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        path = ".".join(str(part) for part in loc) or "<root>"
        node = _node_at(root, loc, key=error["type"] == "extra_forbidden")
        where = (
            f"{source}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"
            if node is not None
            else source
        )
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = f"unknown key {str(loc[-1])!r}"
            holder = _model_at(model, loc)
            known = list(holder.model_fields) if holder is not None else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        problems.append(f"{where}: {path}: {message}")
    return "\n".join(problems)
