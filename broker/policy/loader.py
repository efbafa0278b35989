"""Policy text in, a ready `Policy` out: parse, validate, compile."""

from __future__ import annotations

import hashlib

from broker.policy.document import parse_document
from broker.policy.engine import Policy
from broker.policy.schema import compile_document


def policy_revision(text: str) -> str:
    """The revision id of a policy text: the first 12 hex digits of its SHA-256 (as UTF-8)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def load_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Load a JSON or YAML policy document; raises PolicyError listing every problem found.

    `source` names the text in error messages (``source:line:col: message``); a name ending
    in ``.json`` makes the text JSON-only.
    """
    revision = policy_revision(text)
    parts = compile_document(parse_document(text, source=source), source=source, revision=revision)
    return Policy(revision=revision, default=parts.default, hides=parts.hides, rules=parts.rules)
