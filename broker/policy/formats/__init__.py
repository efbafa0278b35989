"""Foreign policy formats: front ends that compile into the native policy document.

A foreign document is recognised by its shape (`detect.detect_format`) and translated into a
native node tree, which the ordinary `schema.compile_document` then compiles. The engine never
learns which format a policy was written in: one evaluator decides.
"""

from __future__ import annotations

from broker.policy.document import Node
from broker.policy.formats.detect import Format, detect_format
from broker.policy.formats.hosted import translate_hosted
from broker.policy.formats.intercept import translate_intercept
from broker.policy.problems import PolicyProblem


def to_native(root: Node, *, source: str) -> tuple[Format, Node, list[PolicyProblem]]:
    """The document's format, its native equivalent (the same tree when already native) and
    the problems the front end found, positioned in `source`.

    The native tree is built even when there are problems, so compiling it reports what the
    native compiler finds too (operands, regular expressions, versions) in the same error.
    """
    found = detect_format(root)
    if found is Format.INTERCEPT:
        native, problems = translate_intercept(root, source=source)
    elif found is Format.HOSTED:
        native, problems = translate_hosted(root, source=source)
    else:
        return found, root, []
    return found, native, problems.found


__all__ = ["Format", "detect_format", "to_native"]
