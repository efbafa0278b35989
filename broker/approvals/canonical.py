"""Canonical JSON and every hash derived from it, so all layers hash the same bytes.

Canonical form: keys sorted, no insignificant whitespace, non-ASCII kept as UTF-8,
no NaN/Infinity, object keys must be strings (``{1: x}`` and ``{"1": x}`` would
otherwise collide after a JSON round trip).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64
"""prev_hash of the first audit event."""


def canonical_json(value: object) -> str:
    """Serialize `value` canonically; raises ValueError for anything JSON cannot carry exactly."""
    try:
        text = json.dumps(
            _plain(value, path="$"),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"value is not representable as canonical JSON: {exc}") from exc
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"value contains text that is not valid UTF-8: {exc.reason}") from exc
    return text


def canonical_bytes(value: object) -> bytes:
    return canonical_json(value).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def arguments_hash(arguments: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a tool call's arguments."""
    return sha256_hex(canonical_bytes(dict(arguments)))


def request_key(agent: str, tool: str, arguments_digest: str) -> str:
    """Identity of "the same call again": hashed as a JSON array so field boundaries cannot blur."""
    return sha256_hex(canonical_bytes([agent, tool, arguments_digest]))


def audit_timestamp(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def audit_hash(
    prev_hash: str,
    *,
    seq: int,
    approval_id: str,
    event: str,
    actor: str,
    at: datetime,
    details: Mapping[str, Any],
) -> str:
    """Chain hash of one audit event: sha256(prev_hash + canonical JSON of the event)."""
    body = canonical_json(
        {
            "seq": seq,
            "approval_id": approval_id,
            "event": event,
            "actor": actor,
            "at": audit_timestamp(at),
            "details": dict(details),
        }
    )
    return sha256_hex((prev_hash + body).encode("utf-8"))


def _plain(value: object, *, path: str) -> object:
    """Copy of `value` with every Mapping as a dict and every tuple as a list, checking object keys."""
    if isinstance(value, Mapping):
        plain: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"object key {key!r} at {path} is not a string")
            plain[key] = _plain(item, path=f"{path}.{key}")
        return plain
    if isinstance(value, list | tuple):
        return [_plain(item, path=f"{path}[{index}]") for index, item in enumerate(value)]
    return value
