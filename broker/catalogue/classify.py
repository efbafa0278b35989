"""Guess what an MCP tool does from its definition: category, risk, and the reasons why.

Evidence:

1. The MCP annotations (``readOnlyHint``, ``destructiveHint``, ``idempotentHint``,
   ``openWorldHint``), read as one claim about the tool. They come first, but they come from
   a server we do not trust, so they are used asymmetrically (see below).
2. The tool name, split into words (``binance_us_cust_cancelOrder`` -> binance, us, cust,
   cancel, order). Vendor prefixes need no special handling: words that mean nothing to the
   tables in `broker.catalogue.vocabulary` are simply not evidence.
3. The description and title: telling phrases anywhere ("irreversible", "transfers funds"),
   unless negated ("never places an order"), and the opening words when they open with an
   action ("Places a market sell order ...").
4. Input schema property names (``amount`` with ``recipient``, ``private_key``, ``command``).

Tool names are verb first, and many words are verbs and nouns at once (swap, transfer,
order, mark, close). A name is split into clauses at ``and``/``or``/``then``
(``quote_and_swap`` is two actions). A clause reads as a *query* when it opens with a read
verb (``get_swap_quote``), or when it opens with a noun and ends with a read word
(``transfer_history``, ``market_data``), and in both cases every other telling word may be
a noun: ``get_or_create_user`` is not a query, ``get_order_updates`` is (plurals are
nouns). A read *noun* in front does not make a query: in ``market_sell`` and
``balance_transfer`` the last word is the action. A name is a query only when no clause
acts.

In a query, money words in the name are nouns (``get_withdraw_fee``), and arguments that
only say money is involved (``amount``, ``quantity``) are noted but do not count when a read
verb leads the name itself (``get_swap_quote(amount)`` quotes, it does not swap; a silent
name whose description opens "find the route ..." gets no such benefit). Everything else
counts: secrets and code execution, telling description phrases and an action-led
description opening, and every argument of a name that is not led by a read verb. The
riskiest finding decides; equal risks go to the category a reviewer most needs to see. A
write on a trading venue or about orders or funds becomes financial/high; a destructive
action on orders or funds becomes critical, as does placing, changing, buying or selling
(what each risk means is in `broker.catalogue.terms`). A name with no telling word falls back to the
first words of the description, and failing that the tool is treated as write/medium:
unknown effects are not assumed harmless.

Annotations may raise the rating freely: ``destructiveHint: true`` claims destructive/high,
``readOnlyHint: false`` claims write/medium, or external_communication/high when
``openWorldHint: true`` says the writes reach outside systems. They may lower it only when
the other evidence is weak (at most write/medium): ``readOnlyHint: true`` on ``aave_withdraw``
is overridden, on ``refresh_cache`` it is accepted (the rules are in
`broker.catalogue.annotations`). ``idempotentHint`` never changes the
rating (one call does its harm however often it is repeated) but is reported. Every
classification's reasons say which annotations were used, agreed, were overridden, or that
there were none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Any, Final

from broker.catalogue.annotations import apply_hints, read_hints
from broker.catalogue.context_signals import ARGUMENT_SIGNALS, DESCRIPTION_SIGNALS
from broker.catalogue.definition import argument_names, description_text, words
from broker.catalogue.errors import ToolDefinitionError
from broker.catalogue.model import CatalogueTool, Category, Risk, ToolClassification
from broker.catalogue.terms import DESTRUCTIVE_MONEY_OBJECTS, MONEY_OBJECTS, TRADING_VENUES, Signal, plural_of
from broker.catalogue.vocabulary import NAME_SIGNALS

_SENTENCE_END: Final = re.compile(r"[.!?\n]")
# Only the opening words of a description say what the tool does; later ones describe details.
DESCRIPTION_LEAD_WORDS: Final = 8
MAX_REASONS: Final = 6
MAX_NAME_LENGTH: Final = 512

# Words that join two actions in one name: "quote_and_swap" swaps.
_CONJUNCTIONS: Final = frozenset({"and", "or", "then"})
# "Never places an order", "without sending funds": a telling phrase right after one of these is denied.
_NEGATIONS: Final = frozenset(
    {"no", "not", "never", "without", "nor", "doesn", "don", "isn", "won", "cannot"}
)
_NEGATION_REACH: Final = 40


@dataclass(frozen=True, slots=True)
class _Finding:
    category: Category
    risk: Risk
    reason: str
    # Where in the words the finding was made, and what its signal needed: the description's
    # opening counts only its verb and the objects that verb makes telling ("places ... order").
    position: int | None = None
    needs: frozenset[str] = frozenset()

    @property
    def weight(self) -> tuple[int, int]:
        return self.risk.rank, self.category.precedence


@dataclass(frozen=True, slots=True)
class _Clause:
    findings: list[_Finding]
    query: bool
    led_by_read_verb: bool


@dataclass(frozen=True, slots=True)
class _Reading:
    """What a run of identifier-like words says: its findings, whether it reads as a query,
    whether a read verb leads that query, and, when the words open with an action, the
    findings about that action: the opening verb and the objects it makes telling."""

    findings: list[_Finding]
    query: bool
    led_by_read_verb: bool
    opening: list[_Finding]


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
# Words that start a two-word term ("api" of "api_key"): only after these is the pair looked up.
_PAIR_STARTS: Final = frozenset(term.split("_", 1)[0] for term in _NAME_INDEX if "_" in term)


def _opening_bounds() -> dict[str, tuple[int, int]]:
    """For each word that can open an action: the weightiest finding it or its objects can make."""
    bounds: dict[str, tuple[int, int]] = {}
    for signal in NAME_SIGNALS:
        if signal.category is Category.READ_ONLY:
            continue
        weight = (signal.risk.rank, signal.category.precedence)
        for term in signal.terms:
            bounds[term] = max(bounds.get(term, weight), weight)
    for signal in NAME_SIGNALS:
        if signal.category is Category.READ_ONLY:
            continue
        weight = (signal.risk.rank, signal.category.precedence)
        for term in signal.needs & bounds.keys():
            bounds[term] = max(bounds[term], weight)
    return bounds


_OPENING_BOUNDS: Final = _opening_bounds()
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


def _terms(tokens: Sequence[str]) -> set[str]:
    """Words plus neighbours joined with ``_``, so ``api key`` also yields ``api_key``."""
    terms = set(tokens)
    terms.update(f"{first}_{second}" for first, second in pairwise(tokens))
    return terms


def _leading_terms(tokens: Sequence[str]) -> list[str]:
    return [tokens[0], f"{tokens[0]}_{tokens[1]}"] if len(tokens) > 1 else [tokens[0]]


def _opening_bound(tokens: Sequence[str]) -> tuple[int, int] | None:
    """The weightiest finding an opening with these first words could add, if any: most
    descriptions open with a read verb or a noun, and then the opening is not read at all."""
    bounds = [_OPENING_BOUNDS[term] for term in _leading_terms(tokens) if term in _OPENING_BOUNDS]
    return max(bounds) if bounds else None


def _quoted(term: str) -> str:
    return f"'{term}'"


def _describe_term(match: _Match, present: set[str] | frozenset[str]) -> str:
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
        self.description = description_text(definition, self.notes)
        self.argument_names = argument_names(definition.get("inputSchema"), self.notes)
        self.annotations = read_hints(definition.get("annotations"), self.notes)

    def classify(self) -> ToolClassification:
        findings, noted = self._evidence()
        ordered = sorted(findings, key=lambda finding: finding.weight, reverse=True)
        category, risk = ordered[0].category, ordered[0].risk
        reasons = _unique([*(finding.reason for finding in ordered), *noted])
        category, risk, reasons = self._escalate(category, risk, reasons)
        category, risk, reasons, annotation_reason = apply_hints(self.annotations, category, risk, reasons)
        category, risk, reasons = self._escalate(category, risk, reasons)
        kept = _unique([*reasons, *self.notes])
        if annotation_reason not in kept[:MAX_REASONS]:
            kept = [*kept[: MAX_REASONS - 1], annotation_reason]
        return ToolClassification(self.server, self.name, category, risk, tuple(kept[:MAX_REASONS]))

    # -- evidence ---------------------------------------------------------------------------

    def _evidence(self) -> tuple[list[_Finding], list[str]]:
        """Findings that count, and reasons that were weighed but do not count."""
        named = reading = self._read(self.name_words, "name token")
        lead = words(_SENTENCE_END.split(self.description, maxsplit=1)[0])[:DESCRIPTION_LEAD_WORDS]
        findings = list(reading.findings)
        if not findings and lead:
            reading = self._read(lead, "description word")
            findings = list(reading.findings)
        elif lead:
            bound = _opening_bound(lead)
            if bound is not None and bound > max(finding.weight for finding in findings):
                findings += self._read(lead, "description word").opening
        findings += self._description_findings()
        # Only the name's own read verb discounts money arguments: a description that opens with
        # "find the route for ..." says nothing about whether the tool then sends it.
        counted, noted = self._argument_findings(read_verb_query=named.query and named.led_by_read_verb)
        findings += counted
        if not findings:
            findings.append(
                _Finding(
                    Category.WRITE,
                    Risk.MEDIUM,
                    "no telling word in name or description; a tool of unknown effect is treated as "
                    "state-changing",
                )
            )
        return findings, noted

    def _read(self, tokens: Sequence[str], label: str) -> _Reading:
        """Identifier-like words, clause by clause: a name is a query only when no clause acts."""
        findings: list[_Finding] = []
        queries: list[bool] = []
        acts = False
        # The name's own words are already in the context; a description's are not.
        present = self.context if tokens is self.name_words else _terms(tokens) | self.context
        ends = [len(tokens)]
        if not _CONJUNCTIONS.isdisjoint(tokens):
            ends = [*(i for i, token in enumerate(tokens) if token in _CONJUNCTIONS), len(tokens)]
        start = 0
        for end in ends:
            clause = _Clause(*self._clause_findings(tokens[start:end], label, present, offset=start))
            start = end + 1
            if not clause.findings:
                continue
            findings += clause.findings
            if clause.query:
                queries.append(clause.led_by_read_verb)
            else:
                acts = True
        if acts:
            findings = [finding for finding in findings if finding.category is not Category.READ_ONLY]
        query = bool(queries) and not acts
        opening: list[_Finding] = []
        if acts and any(finding.position == 0 for finding in findings):
            leading = _leading_terms(tokens)
            opening = [
                finding
                for finding in findings
                if finding.position == 0 or not finding.needs.isdisjoint(leading)
            ]
        return _Reading(findings, query, query and any(queries), opening)

    def _clause_findings(
        self, tokens: Sequence[str], label: str, present: set[str] | frozenset[str], *, offset: int
    ) -> tuple[list[_Finding], bool, bool]:
        """Findings from one clause, whether it reads as a query, and whether a read verb leads it."""
        matches: list[_Match] = []
        for position, token in enumerate(tokens):
            for signal in _NAME_INDEX.get(token, ()):
                if self._fires(signal, present):
                    matches.append(_Match(token, position, signal))
            if token in _PAIR_STARTS and position + 1 < len(tokens):
                pair = f"{token}_{tokens[position + 1]}"
                for signal in _NAME_INDEX.get(pair, ()):
                    if self._fires(signal, present):
                        matches.append(_Match(pair, position, signal))
        if not matches:
            return [], False, False
        first = matches[0].position
        last = matches[-1].position
        acting = False
        led_by_read_verb = last_reads = False
        first_is_noun = every_action_may_be_a_noun = True
        for match in matches:
            signal = match.signal
            reads = signal.category is Category.READ_ONLY
            noun = signal.also_a_noun or match.term in _PLURAL_TERMS
            if not reads:
                acting = True
                every_action_may_be_a_noun = every_action_may_be_a_noun and (noun or signal.overrides_read)
            if match.position == first:
                # A read noun in front ("market_sell") names what is acted on; only a read verb
                # makes a query.
                led_by_read_verb = led_by_read_verb or (reads and not signal.also_a_noun)
                first_is_noun = first_is_noun and (noun or reads)
            if match.position == last:
                last_reads = last_reads or reads
        query = (led_by_read_verb or (first_is_noun and last_reads)) and every_action_may_be_a_noun
        findings: list[_Finding] = []
        for match in matches:
            signal = match.signal
            if query and signal.category is not Category.READ_ONLY and not signal.overrides_read:
                continue
            if not query and signal.category is Category.READ_ONLY and acting:
                continue
            findings.append(
                _Finding(
                    signal.category,
                    signal.risk,
                    f"{label} {_describe_term(match, present)} {signal.meaning}",
                    match.position + offset,
                    signal.needs,
                )
            )
        return findings, query, query and led_by_read_verb

    def _fires(self, signal: Signal, present: set[str] | frozenset[str]) -> bool:
        if signal.needs and signal.needs.isdisjoint(present):
            return False
        return not (signal.unless and not signal.unless.isdisjoint(present))

    def _description_findings(self) -> list[_Finding]:
        findings = []
        seen: set[str] = set()
        for found in _PHRASES.finditer(self.description):
            phrase = found.group(0)
            if phrase in seen:
                continue
            signal = _PHRASE_SIGNAL[phrase]
            before = words(self.description[max(0, found.start() - _NEGATION_REACH) : found.start()])
            negation = next((word for word in reversed(before[-3:]) if word in _NEGATIONS), None)
            if negation is not None:
                self.notes.append(f"description mentions '{phrase}' after '{negation}'; read as a negation")
                continue
            seen.add(phrase)
            findings.append(
                _Finding(signal.category, signal.risk, f"description mentions '{phrase}', {signal.meaning}")
            )
        return findings

    def _argument_findings(self, *, read_verb_query: bool) -> tuple[list[_Finding], list[str]]:
        whole = set(self.argument_names)
        parts: set[str] = set()
        for argument in self.argument_names:
            parts |= _terms(argument.split("_"))
        findings = []
        noted = []
        for argument in sorted(whole | parts):
            for signal in _ARGUMENT_INDEX.get(argument, ()):
                if signal.whole_name and argument not in whole:
                    continue
                # Needs name whole arguments: 'to' or 'recipient', not the 'address' in 'token_address'.
                if not self._fires(signal, whole):
                    continue
                helper = sorted(signal.needs & whole)
                subject = f"argument {_quoted(argument)}" + (
                    f" (with {_quoted(helper[0])})" if helper else ""
                )
                if read_verb_query and not signal.overrides_read:
                    noted.append(
                        f"{subject} {signal.meaning}, but a read verb leads the name: a query about "
                        "money (noted, not counted)"
                    )
                    continue
                findings.append(_Finding(signal.category, signal.risk, f"{subject} {signal.meaning}"))
        return findings, noted

    # -- escalation --------------------------------------------------------------------------

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


def _unique(reasons: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(reasons))
