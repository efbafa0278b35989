"""Per-agent header templates: an upstream that must see which agent calls it gets it in a header.

Per server, ``agent_headers`` maps header names to templates; ``{agent}`` is the agent's name as
the policy sees it and ``{claims.NAME}`` a claim of the token it signed in with::

    "agent_headers": {"X-Agent": "{agent}", "X-Agent-Email": "{claims.email}"}

Templates are checked at startup (known placeholders only, a valid header name). At call time a
rendered value must fit in a header (no control characters such as CR/LF, at most
`MAX_VALUE_LENGTH` characters); a value that does not, or a claim the agent's token lacks (an
API-key agent has no claims), refuses the call rather than sending it without the header.
Rendered headers are cached per agent (and claim values), so an agent pays for rendering once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.credentials.errors import CredentialError

MAX_VALUE_LENGTH: Final = 1024
MAX_CACHED: Final = 4096
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CLAIM = re.compile(r"claims\.([A-Za-z0-9_:/.-]+)")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")
_RESERVED = frozenset(
    {"host", "content-length", "content-type", "accept", "mcp-session-id", "mcp-protocol-version"}
)


class TemplateError(ValueError):
    """A template cannot be used; the message names the header."""


class AgentHeaderTemplates:
    def __init__(self, templates: Mapping[str, str]) -> None:
        self._parts: list[tuple[str, list[str | tuple[str, str]]]] = []
        claims: set[str] = set()
        for name, template in templates.items():
            if not _TOKEN.fullmatch(name) or name.lower() in _RESERVED:
                raise TemplateError(f"'agent_headers.{name}' is not a header the broker may set")
            pieces: list[str | tuple[str, str]] = []
            position = 0
            for match in _PLACEHOLDER.finditer(template):
                pieces.append(template[position : match.start()])
                reference = match.group(1)
                claim = _CLAIM.fullmatch(reference)
                if reference == "agent":
                    pieces.append(("agent", ""))
                elif claim is not None:
                    pieces.append(("claims", claim.group(1)))
                    claims.add(claim.group(1))
                else:
                    raise TemplateError(
                        f"'agent_headers.{name}': unknown placeholder '{{{reference}}}'; "
                        "use {agent} or {claims.NAME}"
                    )
                position = match.end()
            pieces.append(template[position:])
            if "{" in template[position:] or any(
                "{" in piece or "}" in piece for piece in pieces if isinstance(piece, str)
            ):
                raise TemplateError(f"'agent_headers.{name}' has an unmatched brace")
            self._parts.append((name, pieces))
        self._claims = tuple(sorted(claims))
        self._cache: dict[tuple[str, ...], dict[str, str]] = {}

    def render(self, caller: UpstreamCaller | None) -> Mapping[str, str]:
        if caller is None:
            return {}
        key = (caller.agent, *(_claim_text(caller, claim) for claim in self._claims))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        rendered = {name: self._value(name, pieces, caller) for name, pieces in self._parts}
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[key] = rendered
        return rendered

    def _value(self, name: str, pieces: list[str | tuple[str, str]], caller: UpstreamCaller) -> str:
        value = "".join(
            piece
            if isinstance(piece, str)
            else caller.agent
            if piece[0] == "agent"
            else _claim_value(name, caller, piece[1])
            for piece in pieces
        )
        if _FORBIDDEN.search(value):
            raise CredentialError(
                f"header {name} for agent '{caller.agent}' would contain a control character"
            )
        if len(value) > MAX_VALUE_LENGTH:
            raise CredentialError(
                f"header {name} for agent '{caller.agent}' would be longer than {MAX_VALUE_LENGTH} characters"
            )
        return value


def _claim_text(caller: UpstreamCaller, claim: str) -> str:
    value = caller.claims.get(claim)
    return "" if value is None else repr(value)


def _claim_value(header: str, caller: UpstreamCaller, claim: str) -> str:
    value = caller.claims.get(claim)
    if isinstance(value, bool) or value is None or not isinstance(value, str | int | float):
        raise CredentialError(
            f"header {header} needs claim '{claim}' as a string or number, and agent '{caller.agent}' "
            "has none (agents with an API key carry no claims)"
        )
    return str(value)
