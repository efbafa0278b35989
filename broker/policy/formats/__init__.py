"""Foreign policy formats: front ends that compile into the native policy document.

A foreign document is recognised by its shape (`detect.detect_format`) and translated into a
native node tree (`translate`), which the ordinary `schema.compile_document` then compiles.
The engine never learns which format a policy was written in: one evaluator decides.
"""

from __future__ import annotations

from broker.policy.document import Node
from broker.policy.formats.detect import Format, detect_format
from broker.policy.formats.hosted import translate_hosted
from broker.policy.formats.intercept import translate_intercept


def to_native(root: Node, *, source: str) -> tuple[Format, Node]:
    """The document's format and its native equivalent (the same tree when already native).

    Raises PolicyError listing every problem the front end finds, with positions in `source`.
    """
    found = detect_format(root)
    if found is Format.INTERCEPT:
        return found, translate_intercept(root, source=source)
    if found is Format.HOSTED:
        return found, translate_hosted(root, source=source)
    return found, root


__all__ = ["Format", "detect_format", "to_native"]
