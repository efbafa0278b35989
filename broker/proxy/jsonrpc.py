"""JSON-RPC 2.0 framing shared by the HTTP and stdio endpoints.

Exception tree::

    RpcError          a request that gets a JSON-RPC error object instead of a result
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeGuard

import orjson

from broker.proxy import exact_json

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
REQUEST_CANCELLED: Final = -32800

RequestId = str | int

MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
"""The largest message an agent may send, on either endpoint."""
MAX_PARAMS_NESTING: Final = 128
"""How deeply a request's params may nest. Far beyond what any tool's arguments need, and far below
where serializers and recursive walks give up (orjson writes at most 254 levels)."""


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def result_message(request_id: RequestId, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_message(request_id: RequestId | None, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_error()}


def notification_message(method: str, params: dict[str, Any] | None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def encode(message: dict[str, Any]) -> bytes:
    return exact_json.dumps(message)


def decode(body: bytes) -> Any:
    """The JSON value of a message body; integers stay exact. Raises RpcError(PARSE_ERROR)."""
    try:
        return exact_json.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RpcError(PARSE_ERROR, f"Parse error: {exc}") from None


def check_nesting(body: bytes, params: dict[str, Any]) -> None:
    """Raises RpcError(INVALID_PARAMS) when `params` (parsed from `body`) nests too deeply."""
    # Counting brackets in the body is one C pass; only a body with many of them needs the walk.
    if body.count(b"{") + body.count(b"[") <= MAX_PARAMS_NESTING:
        return
    pending: list[tuple[Any, int]] = [(params, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_PARAMS_NESTING:
            raise RpcError(
                INVALID_PARAMS,
                f"Invalid params: nested deeper than {MAX_PARAMS_NESTING} levels (objects and arrays)",
            )
        children = value.values() if type(value) is dict else value
        pending.extend((child, depth + 1) for child in children if type(child) in (dict, list))


def valid_request_id(value: object) -> TypeGuard[RequestId]:
    # bool is an int subclass, but `true` is not a legal JSON-RPC id.
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


@dataclass(frozen=True, slots=True)
class Envelope:
    """A POSTed JSON-RPC object whose framing is sound. `method` is None for a reply to a
    server request (which the broker never sends, so it is acknowledged and dropped)."""

    message: dict[str, Any]
    method: str | None
    has_id: bool
    request_id: Any
    params: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class EnvelopeRejection:
    status: int
    code: int
    message: str
    request_id: Any = None


def check_envelope(body: bytes) -> Envelope | EnvelopeRejection:
    """The HTTP endpoint's checks of one POSTed message, before any method is looked at."""
    try:
        message = decode(body)
    except RpcError as exc:
        return EnvelopeRejection(400, exc.code, exc.message)
    if not isinstance(message, dict):
        return EnvelopeRejection(
            400, INVALID_REQUEST, "Invalid Request: expected one JSON-RPC object (batches are not supported)"
        )
    if message.get("jsonrpc") != "2.0":
        return EnvelopeRejection(400, INVALID_REQUEST, "Invalid Request: 'jsonrpc' must be \"2.0\"")
    method = message.get("method")
    has_id = "id" in message
    request_id: Any = message.get("id")
    if method is None:
        if has_id and ("result" in message or "error" in message):
            return Envelope(message, None, has_id, request_id, None)
        return EnvelopeRejection(400, INVALID_REQUEST, "Invalid Request: missing 'method'")
    if not isinstance(method, str):
        return EnvelopeRejection(400, INVALID_REQUEST, "Invalid Request: 'method' must be a string")
    if has_id and not valid_request_id(request_id):
        return EnvelopeRejection(400, INVALID_REQUEST, "Invalid Request: 'id' must be a string or an integer")
    params = message.get("params")
    if params is not None and not isinstance(params, dict):
        return EnvelopeRejection(
            400, INVALID_PARAMS, "Invalid params: 'params' must be an object", request_id
        )
    if params is not None:
        try:
            check_nesting(body, params)
        except RpcError as exc:
            return EnvelopeRejection(400, exc.code, exc.message, request_id)
    return Envelope(message, method, has_id, request_id, params)
