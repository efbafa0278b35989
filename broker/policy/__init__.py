"""Tool-call policy: load a JSON/YAML policy document and decide allow / deny / hide / require_approval.

See `broker.policy.engine` for the exact decision semantics and `broker.policy.conditions`
for the ``when`` operators.
"""

from broker.policy.conditions import Condition
from broker.policy.decision import Action, ApprovalRequirement, Decision, RateLimit
from broker.policy.engine import Policy
from broker.policy.explanation import Explanation, HideTrace, Outcome, RuleTrace
from broker.policy.loader import load_policy, policy_revision
from broker.policy.patterns import AgentScope, ToolPattern
from broker.policy.problems import PolicyError, PolicyProblem
from broker.policy.rules import CompiledRule, HideEntry

__all__ = [
    "Action",
    "AgentScope",
    "ApprovalRequirement",
    "CompiledRule",
    "Condition",
    "Decision",
    "Explanation",
    "HideEntry",
    "HideTrace",
    "Outcome",
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "RateLimit",
    "RuleTrace",
    "ToolPattern",
    "load_policy",
    "policy_revision",
]
