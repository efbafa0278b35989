"""The agent-facing streamable HTTP endpoint (`/mcp`), written against raw ASGI.

Both protocol eras are served on one URL:

* handshake era (2024-11-05 ... 2025-11-25): ``initialize`` opens a session whose id comes back
  in ``Mcp-Session-Id``; later POSTs carry it; GET opens the session's notification stream;
  DELETE ends it; ``notifications/cancelled`` cancels an in-flight request, and still reaches a
  session whose DELETE overtook it for a short grace (`broker.proxy.sessions`).
* 2026-07-28: every POST is self-contained (``params._meta`` carries the protocol version and
  client capabilities, routing headers must agree with the body); ``server/discover`` replaces
  the handshake; closing the response stream cancels; ``subscriptions/listen`` streams changes.

The SDK's server stack costs several times the broker's whole CPU budget per call, so this
module answers a fast call with one JSON body and switches to an SSE stream only when a
notification (progress) has to reach the agent before the result does.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any, Final

import anyio
from mcp.shared.inbound import ERROR_CODE_HTTP_STATUS, InboundLadderRejection, classify_inbound_request
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.types import Receive, Scope, Send

from broker.proxy.agent import AgentContext, Claims
from broker.proxy.agent_request import AgentRequest
from broker.proxy.auth.model import AgentVerifier, Challenge, bearer_token
from broker.proxy.change_feed import ChangeFeed
from broker.proxy.gateway import Gateway
from broker.proxy.http_responses import (
    SSE_HEADERS,
    DisconnectWatch,
    ResponseChannel,
    reject,
    respond,
    sse_event,
)
from broker.proxy.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    MAX_MESSAGE_BYTES,
    REQUEST_CANCELLED,
    EnvelopeRejection,
    RequestId,
    RpcError,
    check_envelope,
    error_message,
    notification_message,
    result_message,
    valid_request_id,
)
from broker.proxy.sessions import AgentSession, SessionRegistry
from broker.proxy.waiting import only_timed_out

logger = logging.getLogger(__name__)

PROTOCOL_VERSION_META_KEY: Final = "io.modelcontextprotocol/protocolVersion"
SUBSCRIPTION_ID_META_KEY: Final = "io.modelcontextprotocol/subscriptionId"


class McpHttpEndpoint:
    def __init__(
        self,
        gateway: Gateway,
        *,
        verifier: AgentVerifier,
        sessions: SessionRegistry,
        changes: ChangeFeed,
        max_body_bytes: int = MAX_MESSAGE_BYTES,
        keepalive_seconds: float = 15.0,
        allowed_origins: frozenset[str] | None = None,
    ) -> None:
        self._gateway = gateway
        self._verifier = verifier
        self._sessions = sessions
        self._changes = changes
        self._max_body = max_body_bytes
        self._keepalive = keepalive_seconds
        self._allowed_origins = allowed_origins
        self._closing = anyio.Event()

    def shutdown(self) -> None:
        """Ends the long-lived streams so the server can stop."""
        self._closing.set()
        self._sessions.close_all()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[bytes, bytes] = dict(scope["headers"])
        origin = headers.get(b"origin")
        if origin is not None and not self._origin_allowed(origin.decode("latin-1")):
            # Browsers send Origin; refusing foreign ones stops DNS-rebinding pages from driving agents' tools.
            await reject(send, 403, INVALID_REQUEST, "Forbidden: origin not allowed")
            return
        identity = await self._verifier.verify(headers.get(b"authorization"))
        if isinstance(identity, Challenge):
            await reject(
                send,
                identity.status,
                INVALID_REQUEST,
                identity.message,
                headers=[(b"www-authenticate", identity.www_authenticate)],
            )
            return
        agent = identity.agent
        method = scope["method"]
        if method == "POST":
            await self._post(headers, agent, receive, send, identity.claims or None)
        elif method == "GET":
            await self._open_listen_stream(headers, agent, receive, send)
        elif method == "DELETE":
            await self._delete(headers, agent, send)
        else:
            await reject(
                send, 405, INVALID_REQUEST, "Method not allowed", headers=[(b"allow", b"GET, POST, DELETE")]
            )

    def _origin_allowed(self, origin: str) -> bool:
        if self._allowed_origins is None:
            host = origin.split("://", 1)[-1].split(":", 1)[0].strip("[]")
            return host in ("localhost", "127.0.0.1", "::1")
        return "*" in self._allowed_origins or origin in self._allowed_origins

    # -- POST ------------------------------------------------------------------------------

    async def _post(
        self, headers: dict[bytes, bytes], agent: str, receive: Receive, send: Send, claims: Claims | None
    ) -> None:
        body = await self._read_body(receive, send)
        if body is None:
            return
        envelope = check_envelope(body)
        if isinstance(envelope, EnvelopeRejection):
            await reject(
                send, envelope.status, envelope.code, envelope.message, request_id=envelope.request_id
            )
            return
        message, method, has_id = envelope.message, envelope.method, envelope.has_id
        request_id, params = envelope.request_id, envelope.params
        if method is None:
            # A reply to a server request; the broker sends none, so there is nothing to match.
            await respond(send, 202, None, [])
            return

        if method == "initialize":
            if has_id:
                await self._initialize(agent, request_id, params, send)
            else:
                await reject(send, 400, INVALID_REQUEST, "Invalid Request: initialize must be a request")
            return

        session_header = headers.get(b"mcp-session-id")
        if session_header is not None:
            session = self._sessions.get(session_header.decode("latin-1"), agent)
            if session is None and not has_id and self._late_cancel(session_header, agent, method, params):
                await respond(send, 202, None, [(b"mcp-session-id", session_header)])
                return
            if session is None:
                await reject(
                    send,
                    404,
                    INVALID_REQUEST,
                    "Session not found: it expired or was closed; initialize a new one",
                    request_id=request_id,
                )
                return
            session_headers = [(b"mcp-session-id", session_header)]
            if not has_id:
                self._session_notification(session, method, params)
                await respond(send, 202, None, session_headers)
                return
            # The claims of the token this request came with: it may have been refreshed since initialize.
            context = (
                session.context
                if claims is None
                else replace(session.context, claims=claims, subject_token=bearer_token(headers))
            )
            await self._serve_request(
                context, request_id, method, params, headers, receive, send, session_headers, session
            )
            return

        if self._is_modern(headers, params):
            await self._modern(agent, claims, message, request_id, method, params, headers, receive, send)
            return
        await reject(
            send,
            400,
            INVALID_REQUEST,
            "Bad Request: missing Mcp-Session-Id header; send 'initialize' first (or use protocol 2026-07-28)",
            request_id=request_id,
        )

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                await reject(send, 413, INVALID_REQUEST, f"Request body larger than {self._max_body} bytes")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    def _is_modern(headers: dict[bytes, bytes], params: dict[str, Any] | None) -> bool:
        version = headers.get(b"mcp-protocol-version")
        if version is not None:
            return version.decode("latin-1") not in HANDSHAKE_PROTOCOL_VERSIONS
        meta = params.get("_meta") if params else None
        return isinstance(meta, dict) and PROTOCOL_VERSION_META_KEY in meta

    async def _initialize(
        self, agent: str, request_id: Any, params: dict[str, Any] | None, send: Send
    ) -> None:
        result = self._gateway.initialize_result(params)
        session = self._sessions.open(agent, result["protocolVersion"])
        if session is None:
            await reject(
                send, 503, INTERNAL_ERROR, "Too many sessions; try again later", request_id=request_id
            )
            return
        await respond(
            send, 200, result_message(request_id, result), [(b"mcp-session-id", session.id.encode())]
        )

    def _session_notification(
        self, session: AgentSession, method: str, params: dict[str, Any] | None
    ) -> None:
        if method == "notifications/initialized":
            session.initialized = True
        elif method == "notifications/cancelled":
            cancel = _cancellation(params)
            if cancel is not None:
                session.withdraw(cancel[0], timed_out=cancel[1])

    def _late_cancel(
        self, session_header: bytes, agent: str, method: str, params: dict[str, Any] | None
    ) -> bool:
        """Whether this is a cancellation that the session's own DELETE overtook, still within the grace."""
        cancel = _cancellation(params) if method == "notifications/cancelled" else None
        return cancel is not None and self._sessions.cancel_after_end(
            session_header.decode("latin-1"), agent, cancel[0], timed_out=cancel[1]
        )

    async def _modern(
        self,
        agent: str,
        claims: Claims | None,
        message: dict[str, Any],
        request_id: Any,
        method: str,
        params: dict[str, Any] | None,
        headers: dict[bytes, bytes],
        receive: Receive,
        send: Send,
    ) -> None:
        if "id" not in message:
            # No client-to-server notification means anything on this era: cancelling is closing the stream.
            await respond(send, 202, None, [])
            return
        text_headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in headers.items()}
        route = classify_inbound_request(
            message, headers=text_headers, supported_modern_versions=MODERN_PROTOCOL_VERSIONS
        )
        if isinstance(route, InboundLadderRejection):
            status = ERROR_CODE_HTTP_STATUS.get(route.code, 400)
            await respond(
                send, status, error_message(request_id, RpcError(route.code, route.message, route.data)), []
            )
            return
        if method == "server/discover":
            await respond(send, 200, result_message(request_id, self._gateway.discover_result()), [])
            return
        if method == "subscriptions/listen":
            await self._modern_listen(request_id, params or {}, receive, send)
            return
        token = None if claims is None else bearer_token(headers)
        context = AgentContext(
            agent=agent, session=f"agent:{agent}", modern=True, claims=claims, subject_token=token
        )
        await self._serve_request(context, request_id, method, params, headers, receive, send, [], None)

    async def _serve_request(
        self,
        context: AgentContext,
        request_id: RequestId,
        method: str,
        params: dict[str, Any] | None,
        headers: dict[bytes, bytes],
        receive: Receive,
        send: Send,
        extra_headers: list[tuple[bytes, bytes]],
        session: AgentSession | None,
    ) -> None:
        channel = ResponseChannel(
            send, accepts_sse=b"text/event-stream" in headers.get(b"accept", b""), extra_headers=extra_headers
        )
        request = AgentRequest(channel.notify)
        response: dict[str, Any]
        status = 200
        scope = anyio.CancelScope()
        if session is not None:
            session.in_flight[request_id] = (scope, request)
        # 2026-07-28: closing the response stream is how a client cancels. Before it, a dropped
        # connection is not a cancellation: the client may come back for the result.
        watch = DisconnectWatch(receive, scope, request if context.modern else None)
        try:
            with scope:
                result = await self._gateway.dispatch(context, method, params, request)
            if scope.cancelled_caught:
                response = error_message(request_id, RpcError(REQUEST_CANCELLED, "Request cancelled"))
            else:
                response = result_message(request_id, result)
        except RpcError as exc:
            response = error_message(request_id, exc)
            if context.modern:
                status = ERROR_CODE_HTTP_STATUS.get(exc.code, 200)
        except Exception:
            logger.exception("request %r (%s) failed", request_id, method)
            response = error_message(request_id, RpcError(INTERNAL_ERROR, "Internal error in the broker"))
        finally:
            watch.stop()
            if session is not None:
                session.in_flight.pop(request_id, None)
        if watch.disconnected:
            return
        await channel.finish(response, status)

    # -- streams -----------------------------------------------------------------------------

    async def _open_listen_stream(
        self, headers: dict[bytes, bytes], agent: str, receive: Receive, send: Send
    ) -> None:
        if b"text/event-stream" not in headers.get(b"accept", b""):
            await reject(send, 406, INVALID_REQUEST, "Not Acceptable: GET needs 'Accept: text/event-stream'")
            return
        session_header = headers.get(b"mcp-session-id")
        if session_header is None:
            await reject(send, 400, INVALID_REQUEST, "Bad Request: GET needs an Mcp-Session-Id header")
            return
        session = self._sessions.get(session_header.decode("latin-1"), agent)
        if session is None:
            await reject(send, 404, INVALID_REQUEST, "Session not found")
            return
        if session.listening:
            await reject(send, 409, INVALID_REQUEST, "Conflict: this session already has an open stream")
            return
        session.listening = True
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*SSE_HEADERS, (b"mcp-session-id", session_header)],
                }
            )
            await send({"type": "http.response.body", "body": b": stream open\n\n", "more_body": True})
            await self._pump_changes(receive, send, first=None)
        finally:
            session.listening = False

    async def _modern_listen(
        self, request_id: RequestId, params: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        wanted = params.get("notifications")
        honoured = (
            {"toolsListChanged": True} if isinstance(wanted, dict) and wanted.get("toolsListChanged") else {}
        )
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        acknowledgement = notification_message(
            "notifications/subscriptions/acknowledged", {"notifications": honoured}
        )
        closed_by_server = await self._pump_changes(
            receive, send, first=acknowledgement, forward=bool(honoured)
        )
        if closed_by_server:
            final = result_message(
                request_id, {"resultType": "complete", "_meta": {SUBSCRIPTION_ID_META_KEY: request_id}}
            )
            await send({"type": "http.response.body", "body": sse_event(final), "more_body": False})

    async def _pump_changes(
        self, receive: Receive, send: Send, *, first: dict[str, Any] | None, forward: bool = True
    ) -> bool:
        """Streams change notifications until the client goes away (False) or the broker shuts down (True)."""
        client_gone = anyio.Event()

        async def watch_client() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            client_gone.set()

        with self._changes.subscribe() as queue:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(watch_client)
                try:
                    if first is not None:
                        await send(
                            {"type": "http.response.body", "body": sse_event(first), "more_body": True}
                        )
                    while not client_gone.is_set() and not self._closing.is_set():
                        notification = await _next_or_timeout(
                            queue, self._keepalive, client_gone, self._closing
                        )
                        if notification is None:
                            body = b": keepalive\n\n"
                        elif forward:
                            body = sse_event(notification)
                        else:
                            continue
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                except OSError:
                    pass
                finally:
                    tasks.cancel_scope.cancel()
        if client_gone.is_set():
            return False
        if first is None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

    async def _delete(self, headers: dict[bytes, bytes], agent: str, send: Send) -> None:
        session_header = headers.get(b"mcp-session-id")
        if session_header is None or self._sessions.get(session_header.decode("latin-1"), agent) is None:
            await reject(send, 404, INVALID_REQUEST, "Session not found")
            return
        self._sessions.end(session_header.decode("latin-1"))
        await respond(send, 200, None, [])


def _cancellation(params: dict[str, Any] | None) -> tuple[RequestId, bool] | None:
    """The request a ``notifications/cancelled`` names, and whether it only says the client timed out."""
    request_id: Any = (params or {}).get("requestId")
    if not valid_request_id(request_id):
        return None
    return request_id, only_timed_out((params or {}).get("reason"))


async def _next_or_timeout(
    queue: asyncio.Queue[dict[str, Any]], timeout: float, *stop_events: anyio.Event
) -> dict[str, Any] | None:
    """The next queued notification, or None after `timeout` seconds or once a stop event fires."""
    if not queue.empty():
        return queue.get_nowait()
    result: dict[str, Any] | None = None
    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as tasks:

            async def take() -> None:
                nonlocal result
                result = await queue.get()
                tasks.cancel_scope.cancel()

            async def stop_when(event: anyio.Event) -> None:
                await event.wait()
                tasks.cancel_scope.cancel()

            tasks.start_soon(take)
            for event in stop_events:
                tasks.start_soon(stop_when, event)
    return result
