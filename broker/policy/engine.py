"""The policy engine: which rule decides a tool call, and whether a tool is listed at all.

Names
    A tool has a bare name (``cancel_order``). When the broker aggregates several upstream
    servers it is also known by its qualified name ``<server>__<tool>``
    (``exchange__cancel_order``). Given ``server``, every pattern (in ``hide`` and in
    ``rules``) is matched against both names; without it, against the bare name only.
    Patterns are exact names or case-sensitive shell globs (``*``, ``?``, ``[...]``).

Deciding a call, `Policy.decide(tool, server=, agent=, arguments=)`
    1. Hide. If any ``hide`` pattern matches either name the answer is ``hide`` (the gateway
       drops the tool from ``tools/list`` and refuses calls to it), attributed to the first
       matching entry: rule ``hide[<i>] '<pattern>'``, reason ``hidden by policy``. Rules are
       not consulted.
    2. Rules. A rule *applies* when its ``tool`` pattern matches either name, its ``agents``
       list (if present) matches the calling agent (a call without an agent name matches no
       ``agents`` list), every ``when`` condition (if present) holds for the arguments, and,
       if it has ``unless``, at least one ``unless`` condition does not hold.
       Of the applicable rules the most specific decides. Specificity, highest first:

       a. the pattern is exactly the qualified name;
       b. the pattern is exactly the bare name;
       c. a glob; globs rank by their count of literal (non-wildcard) characters, more is
          more specific, whichever name they matched.

       Ties at the same specificity go to a rule scoped by ``agents`` over an unscoped one,
       then to a rule with ``when`` or ``unless`` over one without, then to the rule earlier in the file.
       The decision names the rule by its ``id``, else as ``rules[<i>] '<pattern>'``; its
       reason is the rule's ``reason`` or a default ("allowed by policy", "denied by policy",
       "approval required by policy"). A rule's ``rate_limit``, ``limits`` (spend and count
       limits, broker/policy/limits.py) and approval settings ride along on the Decision;
       enforcing them is the gateway's job.
    3. Default. No applicable rule: the policy's ``default`` (``deny`` unless it says
       ``allow`` or ``require_approval``), as rule ``default`` with reason ``no rule matches;
       default is <action>``. ``default`` may also be a mapping, ``{action: require_approval,
       timeout: 10m, approvers: [...]}``, taking the approval settings a rule takes; a bare
       ``default: require_approval`` uses the same settings as a bare rule would.
    4. Risk default. Before the default answers, a call that carries the tool's catalogue
       rating (``risk=``, passed by the gateway) is looked up in ``risk_defaults`` (see
       broker/policy/risk_defaults.py): an entry stricter than the default answers instead,
       as rule ``default (risk: <level> → <action>)``. Risk defaults never loosen anything
       and never outrank a rule. Without ``risk=`` (or without ``risk_defaults``) step 3 answers.

    Nothing but a rule's ``when`` and ``unless`` depend on the arguments, so the ranked candidate rules
    for each (tool, server) pair are computed once and cached (the cache holds at most
    `CANDIDATE_CACHE_SIZE` pairs and starts afresh when full, because tool names in calls come
    from agents and are unbounded). A call then costs one dict lookup plus an agent check and
    compiled conditions on the few candidates ahead of the winner. Decisions are built when
    the policy loads; `decide` returns those same objects.

Listing a tool, `Policy.is_listed(tool, server=, agent=)`
    False when the tool is hidden. Otherwise the question is whether any arguments at all
    could get a call through anything but ``deny``. Walking the rules that match the name and
    agent, most specific first, and treating every ``when`` as satisfiable: a non-deny rule
    (conditional or not) means listed; an unconditional deny rule means not listed, since it
    outranks everything after it; a conditional deny is passed over because some arguments
    escape it. With no rule left the default for the tool's rating (step 4, else step 3)
    answers: listed unless it is ``deny``.
    So a tool that only unconditional deny rules match, or that falls through to
    ``default: deny``, does not appear in ``tools/list`` for that agent.

Changed tool definitions
    ``on_definition_change`` (``require_approval``, the default, or ``hide``) is what a call gets
    when the tool's definition changed since an operator accepted it; the policy only carries the
    setting, the gateway applies it after `decide` (see broker/proxy/pinning.py).
    ``on_new_tool`` (``accept``, the default: trust on first use; ``require_approval`` or
    ``hide``: strict pinning) is what a tool gets that no one has accepted yet, from its first
    sighting until ``broker tools accept``; it is None for ``accept``. A never-accepted tool
    under ``accept`` (first seen under a strict policy) gets ``on_definition_change``.

Revision
    ``Policy.revision`` (and every Decision's ``revision``) is the first 12 hex digits of
    the SHA-256 of the policy text as UTF-8, so the same text always has the same revision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from broker.policy.conditions import Condition
from broker.policy.decision import Action, ApprovalRequirement, Decision
from broker.policy.explanation import Explanation, HideTrace, Outcome, RuleTrace
from broker.policy.risk_defaults import RiskDefault, effective_risk_decisions
from broker.policy.rules import CompiledRule, HideEntry

CANDIDATE_CACHE_SIZE: Final = 32_768

_EXACT_QUALIFIED: Final = 0
_EXACT_BARE: Final = 1
_GLOB: Final = 2

_Candidates = tuple[Decision | None, tuple[CompiledRule, ...]]


class Policy:
    """A loaded policy. Build one with `load_policy`; it never changes after that."""

    __slots__ = (
        "_candidates",
        "_default_decision",
        "_exact_hides",
        "_exact_rules",
        "_glob_hides",
        "_glob_rules",
        "_hides",
        "_risk_decisions",
        "_rules",
        "default",
        "on_definition_change",
        "on_new_tool",
        "revision",
    )

    def __init__(
        self,
        *,
        revision: str,
        default: Action,
        hides: tuple[HideEntry, ...],
        rules: tuple[CompiledRule, ...],
        default_approval: ApprovalRequirement | None = None,
        risk_defaults: Mapping[str, RiskDefault] | None = None,
        on_definition_change: Action = Action.REQUIRE_APPROVAL,
        on_new_tool: Action | None = None,
    ) -> None:
        if default not in (Action.ALLOW, Action.DENY, Action.REQUIRE_APPROVAL):
            raise ValueError(f"a policy default must be allow, deny or require_approval, not {default}")
        if (default is Action.REQUIRE_APPROVAL) != (default_approval is not None):
            raise ValueError("default_approval goes with default: require_approval, and only with it")
        self.revision = revision
        self.default = default
        self.on_definition_change = on_definition_change
        self.on_new_tool = on_new_tool
        self._default_decision = Decision(
            default, "default", f"no rule matches; default is {default}", revision, approval=default_approval
        )
        self._risk_decisions = effective_risk_decisions(risk_defaults or {}, self._default_decision)
        self._hides = hides
        self._rules = rules
        self._exact_hides: dict[str, HideEntry] = {}
        for hide in hides:
            if not hide.pattern.is_glob:
                self._exact_hides.setdefault(hide.pattern.text, hide)
        self._glob_hides = tuple(hide for hide in hides if hide.pattern.is_glob)
        self._exact_rules: dict[str, list[CompiledRule]] = {}
        for rule in rules:
            if not rule.pattern.is_glob:
                self._exact_rules.setdefault(rule.pattern.text, []).append(rule)
        self._glob_rules = tuple(rule for rule in rules if rule.pattern.is_glob)
        self._candidates: dict[tuple[str, str | None], _Candidates] = {}

    @property
    def rules(self) -> tuple[CompiledRule, ...]:
        return self._rules

    @property
    def rates_risk(self) -> bool:
        """Whether some risk level gets a stricter default: only then is a tool's rating worth passing."""
        return bool(self._risk_decisions)

    @property
    def may_require_approval(self) -> bool:
        """Whether any call could be held for approval (then the broker's approval tools are listed)."""
        return any(rule.action is Action.REQUIRE_APPROVAL for rule in self._rules) or any(
            decision.action is Action.REQUIRE_APPROVAL
            for decision in (self._default_decision, *self._risk_decisions.values())
        )

    def fallback(self, risk: str | None = None) -> Decision:
        """What a call that no rule applies to gets, for a tool of this catalogue rating."""
        return self._risk_decisions.get(risk, self._default_decision) if risk else self._default_decision

    @property
    def hidden_patterns(self) -> tuple[str, ...]:
        return tuple(hide.pattern.text for hide in self._hides)

    def __repr__(self) -> str:
        return f"<Policy revision={self.revision} default={self.default} rules={len(self._rules)}>"

    def decide(
        self,
        tool: str,
        *,
        server: str | None = None,
        agent: str | None = None,
        arguments: Mapping[str, Any] | None = None,
        risk: str | None = None,
    ) -> Decision:
        candidates = self._candidates.get((tool, server))
        if candidates is None:
            candidates = self._rank(tool, server)
        hidden, rules = candidates
        if hidden is not None:
            return hidden
        for rule in rules:
            if rule.agents is not None and not rule.agents.admits(agent):
                continue
            if rule.check is not None and not rule.check(arguments if arguments is not None else {}):
                continue
            return rule.decision
        if risk is None:
            return self._default_decision
        return self._risk_decisions.get(risk, self._default_decision)

    def is_listed(
        self, tool: str, *, server: str | None = None, agent: str | None = None, risk: str | None = None
    ) -> bool:
        rules = self._rules_admitting(agent, tool, server)
        if rules is None:
            return False
        for rule in rules:
            if rule.action is not Action.DENY:
                return True
            if rule.check is None:
                return False
        return self.fallback(risk).action is not Action.DENY

    def always_requires_approval(
        self, tool: str, *, server: str | None = None, agent: str | None = None, risk: str | None = None
    ) -> bool:
        """Whether every call of this agent to the tool is held for approval, whatever its
        arguments: then the call can be offered as a task. A conditional rule of another
        action that outranks the approval would let some calls through without a human."""
        rules = self._rules_admitting(agent, tool, server)
        if rules is None:
            return False
        for rule in rules:
            if rule.check is None:
                return rule.action is Action.REQUIRE_APPROVAL
            if rule.action is not Action.REQUIRE_APPROVAL:
                return False
        return self.fallback(risk).action is Action.REQUIRE_APPROVAL

    def _rules_admitting(self, agent: str | None, tool: str, server: str | None) -> list[CompiledRule] | None:
        """The tool's rules in rank order that apply to this agent; None when the tool is hidden."""
        candidates = self._candidates.get((tool, server))
        if candidates is None:
            candidates = self._rank(tool, server)
        hidden, rules = candidates
        if hidden is not None:
            return None
        return [rule for rule in rules if rule.agents is None or rule.agents.admits(agent)]

    def explain(
        self,
        tool: str,
        *,
        server: str | None = None,
        agent: str | None = None,
        arguments: Mapping[str, Any] | None = None,
        risk: str | None = None,
    ) -> Explanation:
        qualified = _qualified(tool, server)
        hidden, ranked = self._rank(tool, server, remember=False)
        hide_traces = tuple(
            HideTrace(hide, _matches(hide.pattern.matches, tool, qualified)) for hide in self._hides
        )
        values = arguments if arguments is not None else {}
        traces: list[RuleTrace] = []
        winner: CompiledRule | None = None
        for rule in ranked:
            details: list[str] = []
            admitted = True
            if rule.agents is not None:
                admitted = rule.agents.admits(agent)
                who = f"'{agent}'" if agent is not None else "an unnamed agent"
                details.append(
                    f"agents {list(rule.agents.patterns)}: {who} is {'' if admitted else 'not '}in scope"
                )
            conditions_hold = _probe_all("when", rule.conditions, values, details)
            if rule.unless:
                conditions_hold = conditions_hold and not _probe_all("unless", rule.unless, values, details)
            if hidden is not None:
                outcome = Outcome.NOT_CONSULTED
            elif not admitted:
                outcome = Outcome.AGENT_NOT_IN_SCOPE
            elif not conditions_hold:
                outcome = Outcome.CONDITION_FAILED
            elif winner is None:
                winner, outcome = rule, Outcome.APPLIED
            else:
                outcome = Outcome.OUTRANKED
            traces.append(RuleTrace(rule, outcome, _describe_match(rule, tool, qualified), tuple(details)))
        ranked_set = set(map(id, ranked))
        traces.extend(
            RuleTrace(rule, Outcome.TOOL_MISMATCH, None) for rule in self._rules if id(rule) not in ranked_set
        )
        decision = hidden or (winner.decision if winner is not None else self.fallback(risk))
        return Explanation(
            tool=tool,
            server=server,
            agent=agent,
            arguments=arguments,
            decision=decision,
            default=self.default,
            risk=risk,
            hides=hide_traces,
            rules=tuple(traces),
        )

    def _rank(self, tool: str, server: str | None, *, remember: bool = True) -> _Candidates:
        qualified = _qualified(tool, server)
        names = (tool,) if qualified is None else (qualified, tool)
        hides = [self._exact_hides[name] for name in names if name in self._exact_hides]
        hides.extend(hide for hide in self._glob_hides if _matches(hide.pattern.matches, tool, qualified))
        hidden = min(hides, key=lambda hide: hide.index).decision if hides else None

        ranked: list[tuple[tuple[int, int, bool, bool, int], CompiledRule]] = []
        for tier, name in ((_EXACT_QUALIFIED, qualified), (_EXACT_BARE, tool)):
            if name is not None:
                ranked.extend((_precedence(rule, tier), rule) for rule in self._exact_rules.get(name, ()))
        ranked.extend(
            (_precedence(rule, _GLOB), rule)
            for rule in self._glob_rules
            if _matches(rule.pattern.matches, tool, qualified)
        )
        ranked.sort(key=lambda pair: pair[0])
        candidates = (hidden, tuple(rule for _, rule in ranked))
        if remember:
            if len(self._candidates) >= CANDIDATE_CACHE_SIZE:
                self._candidates.clear()
            self._candidates[(tool, server)] = candidates
        return candidates


def _qualified(tool: str, server: str | None) -> str | None:
    return f"{server}__{tool}" if server else None


def _matches(pattern_matches: Callable[[str], bool], tool: str, qualified: str | None) -> bool:
    return pattern_matches(tool) or (qualified is not None and pattern_matches(qualified))


def _precedence(rule: CompiledRule, tier: int) -> tuple[int, int, bool, bool, int]:
    """Sort key: smaller sorts first and wins."""
    literal = rule.pattern.literal_characters if tier == _GLOB else 0
    return (tier, -literal, rule.agents is None, rule.check is None, rule.index)


def _describe_match(rule: CompiledRule, tool: str, qualified: str | None) -> str:
    if not rule.pattern.is_glob:
        return "exact qualified name" if rule.pattern.text == qualified else "exact name"
    literal = rule.pattern.literal_characters
    plural = "" if literal == 1 else "s"
    matched = qualified if qualified is not None and rule.pattern.matches(qualified) else tool
    return f"glob matching '{matched}' ({literal} literal character{plural})"


def _probe_all(
    label: str, conditions: Sequence[Condition], values: Mapping[str, Any], details: list[str]
) -> bool:
    """Whether every condition holds, noting each one's outcome in `details` (all are probed)."""
    every = True
    for condition in conditions:
        holds, seen = condition.probe(values)
        every = every and holds
        details.append(f"{label} {condition.describe()}: {'holds' if holds else 'does not hold'} ({seen})")
    return every
