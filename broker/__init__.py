"""An MCP gateway that enforces tool policies and holds risky calls for human approval."""

__version__ = "0.1.0"
