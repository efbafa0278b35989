"""Guess what an MCP tool does from its definition: category, risk, and the reasons why.

Evidence, strongest first:

1. The tool name, split into words (``binance_us_cust_cancelOrder`` -> binance, us, cust,
   cancel, order). Vendor prefixes need no special handling: words that mean nothing to the
   tables in `broker.catalogue.vocabulary` are simply not evidence.
2. Phrases in the description and title ("irreversible", "transfers funds").
3. Input schema property names (``amount`` with ``recipient``, ``private_key``, ``command``).

Tool names are verb first, and many words are verbs and nouns at once (swap, transfer,
order, mark, close). A name therefore reads as a *query* when its first telling word is a
read word (``get_swap_quote``), or when it opens with a word that may be a noun and ends
with a read word (``transfer_history``), and in both cases every other telling word may
be a noun: ``get_or_create_user`` is not a query, ``get_order_updates`` is (plurals are nouns).
A query stays read-only/low whatever money words it mentions, except for words that are
dangerous even to read: secrets (``get_api_key``) and code execution. The riskiest remaining finding decides; equal risks go to the category a
reviewer most needs to see. A write on a trading venue or about orders or funds becomes
financial/high; a destructive action on orders or funds becomes critical. A name with no
telling word falls back to the first words of the description, and failing that the tool
is treated as write/medium: unknown effects are not assumed harmless.

Annotations are hints from a server we do not trust, so they are used asymmetrically:
``destructiveHint: true`` and ``readOnlyHint: false`` only ever raise the risk and are
always believed. ``readOnlyHint: true`` lowers a tool to read_only/low only when the name,
description and arguments at most weakly suggest a write (write/medium); when they say
destructive, financial, code, credentials or messaging, or anything high-risk, the hint is
ignored and the reasons say so. A lying server can therefore make a tool look riskier, but
never make ``aave_withdraw`` look safe.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Any, Final

from broker.catalogue.errors import ToolDefinitionError
from broker.catalogue.model import CatalogueTool, Category, Risk, ToolClassification
from broker.catalogue.vocabulary import (
    ARGUMENT_SIGNALS,
    DESCRIPTION_SIGNALS,
    DESTRUCTIVE_MONEY_OBJECTS,
    MONEY_OBJECTS,
    NAME_SIGNALS,
    TRADING_VENUES,
    Signal,
    plural_of,
)

# Splits snake_case, kebab-case, dotted and camelCase: getAPIKey -> get API Key, transferERC20 -> ERC20.
_WORD: Final = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z0-9]+|[A-Z]+[0-9]*")
_SENTENCE_END: Final = re.compile(r"[.!?\n]")
# Only the opening words of a description say what the tool does; later ones describe details.
DESCRIPTION_LEAD_WORDS: Final = 8
MAX_REASONS: Final = 6
# Arguments nested deeper than this are options of options; their names say little about the tool.
MAX_SCHEMA_DEPTH: Final = 2
MAX_NAME_LENGTH: Final = 512
# A description is read only this far: attackers control its length, and the telling phrases come early.
MAX_DESCRIPTION_CHARS: Final = 4096

_WEAK_EVIDENCE: Final = frozenset({Category.READ_ONLY, Category.WRITE})


@dataclass(frozen=True, slots=True)
class _Finding:
    category: Category
    risk: Risk
    reason: str
    overrides_read: bool = False

    @property
    def weight(self) -> tuple[int, int]:
        return self.risk.rank, self.category.precedence


@dataclass(frozen=True, slots=True)
class _Match:
    term: str
    position: int
    signal: Signal


def _index(signals: Sequence[Signal]) -> dict[str, tuple[Signal, ...]]:
    index: dict[str, list[Signal]] = {}
    for signal in signals:
        for term in signal.terms:
            index.setdefault(term, []).append(signal)
    return {term: tuple(found) for term, found in index.items()}


_NAME_INDEX: Final = _index(NAME_SIGNALS)
# "get_order_updates": the plural of a verb names things, so it does not stop a name reading as a query.
_PLURAL_TERMS: Final = frozenset(
    plural_of(term) for signal in NAME_SIGNALS for term in signal.terms if plural_of(term) in signal.terms
)
_ARGUMENT_INDEX: Final = _index(ARGUMENT_SIGNALS)
_PHRASE_SIGNAL: Final = {phrase: signal for signal in DESCRIPTION_SIGNALS for phrase in signal.terms}
_PHRASES: Final = re.compile(
    r"\b(?:"
    + "|".join(re.escape(phrase) for phrase in sorted(_PHRASE_SIGNAL, key=len, reverse=True))
    + r")\b"
)


def words(text: str) -> list[str]:
    """The lower-case words of an identifier or sentence, in order."""
    return [word.lower() for word in _WORD.findall(text)]


def _terms(tokens: Sequence[str]) -> set[str]:
    """Words plus neighbours joined with ``_``, so ``api key`` also yields ``api_key``."""
    terms = set(tokens)
    terms.update(f"{first}_{second}" for first, second in pairwise(tokens))
    return terms


def _quoted(term: str) -> str:
    return f"'{term}'"


def _describe_term(match: _Match, present: set[str]) -> str:
    helper = sorted(match.signal.needs & present)
    return f"{_quoted(match.term)} (with {_quoted(helper[0])})" if helper else _quoted(match.term)


@lru_cache(maxsize=1024)
def _server_terms(server: str) -> frozenset[str]:
    return frozenset(_terms(words(server)))


def classify_tool(definition: Mapping[str, Any], server: str) -> ToolClassification:
    """Classify one ``tools/list`` entry offered by `server`; raises ToolDefinitionError if unusable."""
    if not isinstance(definition, Mapping):
        raise ToolDefinitionError(
            server, f"a tool definition must be an object, got {type(definition).__name__}"
        )
    name = definition.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ToolDefinitionError(server, f"a tool definition needs a non-empty string 'name', got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ToolDefinitionError(
            server, f"tool name is {len(name)} characters long (at most {MAX_NAME_LENGTH})"
        )
    return _Classifier(definition, name, server).classify()


def classify_tools(tools: Iterable[CatalogueTool]) -> list[ToolClassification]:
    return [classify_tool(tool.definition, tool.server) for tool in tools]


class _Classifier:
    def __init__(self, definition: Mapping[str, Any], name: str, server: str) -> None:
        self.name = name
        self.server = server
        self.notes: list[str] = []
        self.name_words = words(name)
        self.context = _terms(self.name_words) | _server_terms(server)
        self.description = self._description(definition)
        self.argument_names = self._argument_names(definition.get("inputSchema"))
        self.annotations = self._annotations(definition.get("annotations"))

    def classify(self) -> ToolClassification:
        findings, read_intent = self._name_findings(self.name_words, "name token")
        if not findings and self.description:
            lead = words(_SENTENCE_END.split(self.description, maxsplit=1)[0])[:DESCRIPTION_LEAD_WORDS]
            findings, read_intent = self._name_findings(lead, "description word")
        findings += self._description_findings(read_intent)
        findings += self._argument_findings(read_intent)
        if not findings:
            findings.append(
                _Finding(
                    Category.WRITE,
                    Risk.MEDIUM,
                    "no telling word in name or description; a tool of unknown effect is treated as "
                    "state-changing",
                )
            )
        ordered = sorted(findings, key=lambda finding: finding.weight, reverse=True)
        category, risk = ordered[0].category, ordered[0].risk
        reasons = _unique(finding.reason for finding in ordered)

        category, risk, reasons = self._apply_annotations(category, risk, reasons)
        category, risk, reasons = self._escalate(category, risk, reasons)
        return ToolClassification(
            self.server, self.name, category, risk, tuple(_unique([*reasons, *self.notes])[:MAX_REASONS])
        )

    # -- evidence ---------------------------------------------------------------------------

    def _name_findings(self, tokens: Sequence[str], label: str) -> tuple[list[_Finding], bool]:
        """Findings from identifier-like words, and whether those words read as a query."""
        terms = _terms(tokens)
        present = terms | self.context
        matches: list[_Match] = []
        for position, token in enumerate(tokens):
            candidates = [token]
            if position + 1 < len(tokens):
                candidates.append(f"{token}_{tokens[position + 1]}")
            for term in candidates:
                for signal in _NAME_INDEX.get(term, ()):
                    if self._fires(signal, present):
                        matches.append(_Match(term, position, signal))
        if not matches:
            return [], False
        acting = [match for match in matches if match.signal.category is not Category.READ_ONLY]
        nouns = {id(match) for match in matches if match.signal.also_a_noun or match.term in _PLURAL_TERMS}
        first = min(matches, key=lambda match: match.position)
        last = max(matches, key=lambda match: match.position)
        first_reads = any(
            match.signal.category is Category.READ_ONLY
            for match in matches
            if match.position == first.position
        )
        last_reads = any(
            match.signal.category is Category.READ_ONLY
            for match in matches
            if match.position == last.position
        )
        first_is_noun = all(
            id(match) in nouns or match.signal.category is Category.READ_ONLY
            for match in matches
            if match.position == first.position
        )
        read_intent = (first_reads or (first_is_noun and last_reads)) and all(
            id(match) in nouns or match.signal.overrides_read for match in acting
        )
        findings: list[_Finding] = []
        for match in matches:
            signal = match.signal
            if read_intent and signal.category is not Category.READ_ONLY and not signal.overrides_read:
                continue
            if not read_intent and signal.category is Category.READ_ONLY and acting:
                continue
            findings.append(
                _Finding(
                    signal.category,
                    signal.risk,
                    f"{label} {_describe_term(match, present)} {signal.meaning}",
                    signal.overrides_read,
                )
            )
        return findings, read_intent

    def _fires(self, signal: Signal, present: set[str]) -> bool:
        if signal.needs and signal.needs.isdisjoint(present):
            return False
        return not (signal.unless and not signal.unless.isdisjoint(present))

    def _description_findings(self, read_intent: bool) -> list[_Finding]:
        findings = []
        for phrase in dict.fromkeys(_PHRASES.findall(self.description)):
            signal = _PHRASE_SIGNAL[phrase]
            if read_intent and not signal.overrides_read:
                continue
            findings.append(
                _Finding(signal.category, signal.risk, f"description mentions '{phrase}', {signal.meaning}")
            )
        return findings

    def _argument_findings(self, read_intent: bool) -> list[_Finding]:
        whole = set(self.argument_names)
        parts: set[str] = set()
        for argument in self.argument_names:
            parts |= _terms(argument.split("_"))
        findings = []
        for argument in sorted(whole | parts):
            for signal in _ARGUMENT_INDEX.get(argument, ()):
                if signal.whole_name and argument not in whole:
                    continue
                if read_intent and not signal.overrides_read:
                    continue
                # Needs name whole arguments: 'to' or 'recipient', not the 'address' in 'token_address'.
                if not self._fires(signal, whole):
                    continue
                helper = sorted(signal.needs & whole)
                subject = f"argument {_quoted(argument)}" + (
                    f" (with {_quoted(helper[0])})" if helper else ""
                )
                findings.append(_Finding(signal.category, signal.risk, f"{subject} {signal.meaning}"))
        return findings

    # -- annotations and escalation ---------------------------------------------------------

    def _apply_annotations(
        self, category: Category, risk: Risk, reasons: list[str]
    ) -> tuple[Category, Risk, list[str]]:
        destructive = self.annotations.get("destructiveHint")
        read_only = self.annotations.get("readOnlyHint")
        if destructive is True:
            if category in _WEAK_EVIDENCE:
                return (
                    Category.DESTRUCTIVE,
                    max(risk, Risk.HIGH),
                    ["annotation destructiveHint=true", *reasons],
                )
            return category, max(risk, Risk.HIGH), [*reasons, "annotation destructiveHint=true agrees"]
        if read_only is False and category is Category.READ_ONLY:
            return (
                Category.WRITE,
                Risk.MEDIUM,
                ["annotation readOnlyHint=false: the server says it writes", *reasons],
            )
        if read_only is True:
            if category is Category.READ_ONLY:
                return category, risk, [*reasons, "annotation readOnlyHint=true agrees"]
            if category is Category.WRITE and risk <= Risk.MEDIUM:
                return (
                    Category.READ_ONLY,
                    Risk.LOW,
                    [
                        "annotation readOnlyHint=true accepted: name and description only weakly suggest a "
                        "write",
                        *reasons,
                    ],
                )
            return (
                category,
                risk,
                [
                    *reasons[:1],
                    "annotation readOnlyHint=true ignored: contradicted by name, description or arguments "
                    "(annotations are untrusted hints)",
                    *reasons[1:],
                ],
            )
        return category, risk, reasons

    def _escalate(
        self, category: Category, risk: Risk, reasons: list[str]
    ) -> tuple[Category, Risk, list[str]]:
        if category is Category.WRITE:
            money = sorted(MONEY_OBJECTS & _terms(self.name_words))
            venue = sorted(TRADING_VENUES & self.context)
            if money:
                reason = f"name token {_quoted(money[0])} ties the change to orders or funds"
                return Category.FINANCIAL, max(risk, Risk.HIGH), [*reasons, reason]
            if venue:
                reason = f"{_quoted(venue[0])} is a trading venue, so a change there is financial"
                return Category.FINANCIAL, max(risk, Risk.HIGH), [*reasons, reason]
        if category is Category.DESTRUCTIVE and risk < Risk.CRITICAL:
            money = sorted(DESTRUCTIVE_MONEY_OBJECTS & _terms(self.name_words))
            if money:
                reason = f"name token {_quoted(money[0])}: cancelling or removing orders or funds is critical"
                return category, Risk.CRITICAL, [*reasons, reason]
        return category, risk, reasons

    # -- reading the definition -------------------------------------------------------------

    def _description(self, definition: Mapping[str, Any]) -> str:
        texts = []
        for key in ("description", "title"):
            value = definition.get(key)
            if isinstance(value, str):
                texts.append(value[:MAX_DESCRIPTION_CHARS])
            elif value is not None:
                self.notes.append(f"'{key}' is not a string and was ignored")
        annotations = definition.get("annotations")
        if isinstance(annotations, Mapping) and isinstance(annotations.get("title"), str):
            texts.append(annotations["title"][:MAX_DESCRIPTION_CHARS])
        return "\n".join(texts).lower()

    def _argument_names(self, schema: object) -> list[str]:
        if schema is None:
            return []
        if not isinstance(schema, Mapping):
            self.notes.append("inputSchema is not an object; arguments were not inspected")
            return []
        names: list[str] = []
        _collect_properties(schema, names, depth=0)
        return names

    def _annotations(self, annotations: object) -> dict[str, bool]:
        if annotations is None:
            return {}
        if not isinstance(annotations, Mapping):
            self.notes.append("annotations are not an object and were ignored")
            return {}
        hints: dict[str, bool] = {}
        for key in ("readOnlyHint", "destructiveHint"):
            value = annotations.get(key)
            if isinstance(value, bool):
                hints[key] = value
            elif value is not None:
                self.notes.append(f"annotation {key} is not a boolean and was ignored")
        return hints


def _collect_properties(schema: Mapping[str, Any], names: list[str], *, depth: int) -> None:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return
    for key, child in properties.items():
        if not isinstance(key, str):
            continue
        names.append("_".join(words(key)))
        if depth + 1 < MAX_SCHEMA_DEPTH and isinstance(child, Mapping):
            _collect_properties(child, names, depth=depth + 1)


def _unique(reasons: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(reasons))
