"""The tool catalogue: what each upstream tool is likely to do, a starting policy, and policy diffs.

Everything here is pure computation over tool definitions and loaded policies; the CLI
(``broker tools scan``, ``broker policy init``, ``broker policy diff``) fetches the tool lists
and prints what these functions return.
"""

from broker.catalogue.classify import classify_tool, classify_tools
from broker.catalogue.diff import (
    Audience,
    DecisionChange,
    DecisionSnapshot,
    DecisionStep,
    PossibleDecisions,
    diff_policies,
    render_diff,
)
from broker.catalogue.errors import CatalogueError, StarterPolicyError, ToolDefinitionError
from broker.catalogue.model import CatalogueTool, Category, Risk, ToolClassification
from broker.catalogue.report import render_table, to_json
from broker.catalogue.starter import starter_policy_yaml

__all__ = [
    "Audience",
    "CatalogueError",
    "CatalogueTool",
    "Category",
    "DecisionChange",
    "DecisionSnapshot",
    "DecisionStep",
    "PossibleDecisions",
    "Risk",
    "StarterPolicyError",
    "ToolClassification",
    "ToolDefinitionError",
    "classify_tool",
    "classify_tools",
    "diff_policies",
    "render_diff",
    "render_table",
    "starter_policy_yaml",
    "to_json",
]
