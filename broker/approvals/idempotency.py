"""The ids in a call's arguments that let a human find out whether it ran.

When a released call's outcome is unknown, the approver has to ask the upstream (an exchange,
a payment provider) whether the order or request exists. Many APIs take an id chosen by the
client for exactly that (Binance ``newClientOrderId``, Stripe ``Idempotency-Key``, FIX
``ClOrdID``, OKX ``clOrdId``, KuCoin ``clientOid``, AWS ``ClientToken``); this finds them.

A key matches when, lower-cased with everything but letters and digits removed, it is one of
`ID_KEYS`. Keys are looked for at the top level and one level deep (in an object, or in the
objects of a list, e.g. a batch of orders). Only strings and integers count as ids; a value is
cut to `MAX_VALUE_CHARS`. Pure: no I/O, same input, same answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ID_KEYS = frozenset(
    {
        "clientorderid",
        "newclientorderid",
        "origclientorderid",
        "clordid",
        "clientoid",
        "idempotencykey",
        "idempotencyid",
        "requestid",
        "clientrequestid",
        "clienttoken",
        "dedupekey",
        "dedupeid",
        "deduplicationid",
        "nonce",
    }
)
MAX_VALUE_CHARS = 200


def _normalized(key: str) -> str:
    return "".join(char for char in key.lower() if char.isalnum())


def _id_value(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    if not text:
        return None
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def _matches(mapping: Mapping[str, Any], prefix: str) -> list[tuple[str, str]]:
    found = []
    for key, value in mapping.items():
        if isinstance(key, str) and _normalized(key) in ID_KEYS:
            text = _id_value(value)
            if text is not None:
                found.append((f"{prefix}{key}", text))
    return found


def idempotency_ids(arguments: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(path, value) for every id found, top level first, in argument order; paths read like
    ``newClientOrderId``, ``order.client_order_id`` or ``orders[1].clOrdId``."""
    found = _matches(arguments, "")
    for key, value in arguments.items():
        if isinstance(value, Mapping):
            found.extend(_matches(value, f"{key}."))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    found.extend(_matches(item, f"{key}[{index}]."))
    return found


def describe_ids(arguments: Mapping[str, Any]) -> str | None:
    """``newClientOrderId=abc-1, nonce=42`` for showing to people, or None when there is none."""
    ids = idempotency_ids(arguments)
    if not ids:
        return None
    return ", ".join(f"{path}={value}" for path, value in ids)
