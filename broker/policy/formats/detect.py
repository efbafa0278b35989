"""Which format a policy document is written in, told by its shape alone.

native
    has a top-level ``rules``, or none of the shapes below (``version``/``default``/``hide``
    only: such a document means the same in every format that has those keys).
intercept
    PolicyLayer Intercept YAML: some ``tools.<name>`` has ``rules``, or the document has a
    ``description`` next to ``tools``.
hosted
    PolicyLayer's hosted JSON: ``all_tools``, or ``tools`` whose entries use ``require``,
    ``deny_if`` or ``limits``, or are empty (``{}`` allows the tool).

A document with both ``rules`` and ``tools`` is native, so the native compiler reports the
unknown key ``tools`` with its position rather than guessing.
"""

from __future__ import annotations

from enum import Enum

from broker.policy.document import MappingNode, Node

HOSTED_TOOL_KEYS = frozenset({"require", "deny_if", "limits"})


class Format(Enum):
    NATIVE = "native"
    INTERCEPT = "intercept"
    HOSTED = "hosted"

    @property
    def title(self) -> str:
        """How the CLI names the format to an operator."""
        return _TITLES[self]


_TITLES = {
    Format.NATIVE: "native",
    Format.INTERCEPT: "PolicyLayer Intercept YAML",
    Format.HOSTED: "PolicyLayer hosted JSON",
}


def detect_format(root: Node) -> Format:
    if not isinstance(root, MappingNode) or root.get("rules") is not None:
        return Format.NATIVE
    tools = root.get("tools")
    if root.get("all_tools") is not None:
        return Format.HOSTED
    if tools is None:
        return Format.NATIVE
    bodies = [body for _, body in tools] if isinstance(tools, MappingNode) else []
    if any(isinstance(body, MappingNode) and body.get("rules") is not None for body in bodies):
        return Format.INTERCEPT
    if any(
        isinstance(body, MappingNode) and any(key.name in HOSTED_TOOL_KEYS for key, _ in body)
        for body in bodies
    ):
        return Format.HOSTED
    if root.get("description") is not None:
        return Format.INTERCEPT
    # ``tools`` with empty bodies (or not a mapping at all): the hosted front end reports
    # what is wrong with it in PolicyLayer's terms.
    return Format.HOSTED
