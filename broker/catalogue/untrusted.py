"""Tool names, descriptions and server names come from upstream servers, which we do not trust.

Before such text reaches a terminal, a YAML comment or a table cell it goes through
`printable`, so an escape sequence or a line break in a tool name cannot repaint the
operator's screen or smuggle a line into a generated policy file.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with every non-printable character (controls, line and paragraph separators) escaped."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
