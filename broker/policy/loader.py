"""Policy text in, a ready `Policy` out: decode, parse, validate, compile."""

from __future__ import annotations

import hashlib

from broker.policy.document import parse_document
from broker.policy.engine import Policy
from broker.policy.formats import Format, to_native
from broker.policy.problems import PolicyError, PolicyProblem
from broker.policy.schema import PolicyParts, compile_document


def policy_revision(text: str) -> str:
    """The revision id of a policy text: the first 12 hex digits of its SHA-256 (as UTF-8)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def decode_policy(data: bytes, *, source: str = "<policy>") -> str:
    """The text of a policy file, which must be UTF-8 (as JSON and YAML require).

    Raises PolicyError pointing at the first byte that is not UTF-8, such as a comment an
    editor saved as Latin-1.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        line_start = data.rfind(b"\n", 0, error.start) + 1
        column = len(data[line_start : error.start].decode("utf-8", "replace")) + 1
        message = f"not valid UTF-8: byte 0x{data[error.start]:02x} ({error.reason}); save the file as UTF-8"
        raise PolicyError([PolicyProblem(source, line, column, message)]) from None


def _compile(text: str, source: str, revision: str) -> tuple[Format, PolicyParts]:
    found, native, problems = to_native(parse_document(text, source=source), source=source)
    try:
        parts = compile_document(native, source=source, revision=revision)
    except PolicyError as error:
        raise PolicyError([*problems, *error.problems]) from None
    if problems:
        raise PolicyError(problems)
    return found, parts


def load_policy(text: str | bytes, *, source: str = "<policy>") -> Policy:
    """`load_policy_with_format` without the format."""
    return load_policy_with_format(text, source=source)[0]


def load_policy_with_format(text: str | bytes, *, source: str = "<policy>") -> tuple[Policy, Format]:
    """Load a JSON or YAML policy document, and say which format it was written in; raises
    PolicyError listing every problem found.

    PolicyLayer documents (Intercept YAML, hosted JSON) are recognised by their shape and
    compiled through their front end in `broker.policy.formats` into the same native rules.

    `text` may be the file's bytes, which must then be UTF-8. `source` names the text in error
    messages (``source:line:col: message``); a name ending in ``.json`` makes the text JSON-only.
    """
    if isinstance(text, bytes):
        text = decode_policy(text, source=source)
    revision = policy_revision(text)
    try:
        found, parts = _compile(text, source, revision)
    except (ValueError, RecursionError) as error:
        # The parser reports what it knows with a position; whatever slips past it must still reach
        # the operator as a policy problem, never as a crash of the reload or of the CLI.
        raise PolicyError([PolicyProblem(source, 1, 1, f"cannot be loaded: {error}")]) from None
    policy = Policy(
        revision=revision,
        default=parts.default,
        hides=parts.hides,
        rules=parts.rules,
        default_approval=parts.default_approval,
        risk_defaults=parts.risk_defaults,
        on_definition_change=parts.on_definition_change,
        on_new_tool=parts.on_new_tool,
    )
    return policy, found
