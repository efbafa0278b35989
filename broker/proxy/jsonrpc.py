"""JSON-RPC 2.0 framing shared by the HTTP and stdio endpoints.

Exception tree::

    RpcError          a request that gets a JSON-RPC error object instead of a result
"""

from __future__ import annotations

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
