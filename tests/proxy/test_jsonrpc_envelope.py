"""The framing checks of one POSTed JSON-RPC message, each refusal with its status, code and id."""

from __future__ import annotations

import json

import pytest

from broker.proxy.jsonrpc import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_PARAMS_NESTING,
    PARSE_ERROR,
    Envelope,
    EnvelopeRejection,
    check_envelope,
)


@pytest.mark.parametrize(
    ("body", "code", "words", "request_id"),
    [
        (b"{not json", PARSE_ERROR, "", None),
        (b"[]", INVALID_REQUEST, "batches are not supported", None),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', INVALID_REQUEST, "'jsonrpc' must be", None),
        (b'{"jsonrpc": "2.0", "id": 1}', INVALID_REQUEST, "missing 'method'", None),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 5}', INVALID_REQUEST, "'method' must be a string", None),
        (b'{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}', INVALID_REQUEST, "'id' must be", None),
        (
            b'{"jsonrpc": "2.0", "id": 7, "method": "ping", "params": []}',
            INVALID_PARAMS,
            "must be an object",
            7,
        ),
    ],
)
def test_refusals(body: bytes, code: int, words: str, request_id: object) -> None:
    refused = check_envelope(body)
    assert isinstance(refused, EnvelopeRejection)
    assert (refused.status, refused.code, refused.request_id) == (400, code, request_id)
    assert words in refused.message


def test_too_deep_params_are_refused_with_the_request_id() -> None:
    deep: object = 1
    for _ in range(MAX_PARAMS_NESTING + 1):
        deep = [deep]
    body = json.dumps({"jsonrpc": "2.0", "id": "a", "method": "tools/call", "params": {"x": deep}}).encode()
    refused = check_envelope(body)
    assert isinstance(refused, EnvelopeRejection) and refused.request_id == "a"


def test_requests_notifications_and_replies_pass() -> None:
    request = check_envelope(b'{"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}}')
    assert request == Envelope(
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}}, "tools/list", True, 3, {}
    )
    note = check_envelope(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
    assert isinstance(note, Envelope) and not note.has_id and note.params is None
    reply = check_envelope(b'{"jsonrpc": "2.0", "id": 9, "result": {}}')
    assert isinstance(reply, Envelope) and reply.method is None
