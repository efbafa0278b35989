"""What goes wrong in the tool catalogue.

Exception tree::

    CatalogueError              any problem turning tool definitions into classifications or a policy
    ├── ToolDefinitionError     a ``tools/list`` entry is not a usable tool definition
    │                           (not an object, no name, wrongly typed fields)
    └── StarterPolicyError      the classifications cannot become one policy, e.g. two servers
                                offer the same tool name but rules would name bare tools
"""

from __future__ import annotations


class CatalogueError(Exception):
    pass


class ToolDefinitionError(CatalogueError):
    def __init__(self, server: str, message: str) -> None:
        super().__init__(f"server '{server}': {message}")
        self.server = server
        self.detail = message


class StarterPolicyError(CatalogueError):
    pass
