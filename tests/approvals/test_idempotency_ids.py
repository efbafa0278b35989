"""Finding the ids a human can look a call up by at the upstream."""

from __future__ import annotations

from typing import Any

import pytest

from broker.approvals.idempotency import MAX_VALUE_CHARS, describe_ids, idempotency_ids


@pytest.mark.parametrize(
    "key",
    [
        "client_order_id",
        "clientOrderId",
        "newClientOrderId",
        "origClientOrderId",
        "ClOrdID",
        "clOrdId",
        "clientOid",
        "idempotency_key",
        "idempotencyKey",
        "Idempotency-Key",
        "request_id",
        "requestId",
        "client_request_id",
        "ClientToken",
        "dedupe_key",
        "deduplication-id",
        "nonce",
        "NONCE",
    ],
)
def test_every_spelling_of_a_known_key_is_found(key: str) -> None:
    assert idempotency_ids({key: "abc-1", "quantity": 3}) == [(key, "abc-1")]


def test_ids_are_found_at_the_top_and_one_level_down_in_argument_order() -> None:
    arguments: dict[str, Any] = {
        "symbol": "BTCUSD",
        "order": {"side": "buy", "newClientOrderId": "web-7", "meta": {"request_id": "too-deep"}},
        "orders": [{"clOrdId": "b-1"}, "not an object", {"clOrdId": 42}],
        "nonce": 1700000000123,
    }

    assert idempotency_ids(arguments) == [
        ("nonce", "1700000000123"),
        ("order.newClientOrderId", "web-7"),
        ("orders[0].clOrdId", "b-1"),
        ("orders[2].clOrdId", "42"),
    ]
    assert describe_ids(arguments) == (
        "nonce=1700000000123, order.newClientOrderId=web-7, orders[0].clOrdId=b-1, orders[2].clOrdId=42"
    )


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"order_id": "o-1", "client": "acme", "id": "x", "requestor": "bob"},  # near misses
        {"client_order_id": None},
        {"client_order_id": True},
        {"client_order_id": ""},
        {"client_order_id": 1.5},
        {"client_order_id": {"nested": "object"}},
        {"client_order_id": ["list"]},
    ],
)
def test_no_id_is_made_up(arguments: dict[str, Any]) -> None:
    assert idempotency_ids(arguments) == []
    assert describe_ids(arguments) is None


def test_a_long_value_is_cut() -> None:
    [(path, value)] = idempotency_ids({"request_id": "r" * 1000})
    assert path == "request_id"
    assert len(value) == MAX_VALUE_CHARS and value.endswith("…")
