"""The one error a broker configuration raises, whichever section is at fault."""

from __future__ import annotations


class ConfigError(Exception):
    """The file cannot be read, parsed or validated; the message says where."""
