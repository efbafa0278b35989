"""An upstream MCP server reached over streamable HTTP (handshake era, protocol 2025-11-25).

Each request is one POST whose answer is either a JSON body or an event stream carrying
the request's notifications and then its response; the POST is made by the task awaiting
the request, so there is no queue or helper task on the hot path. Server-initiated
notifications (``tools/list_changed``) arrive on an optional long-lived GET stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from http import HTTPStatus
from urllib.parse import urlsplit

import orjson

from broker.proxy import exact_json
from broker.proxy.upstream.background import BackgroundTasks
from broker.proxy.upstream.base import (
    JsonObject,
    NoCredential,
    NotificationHandler,
    UpstreamError,
    UpstreamLost,
    UpstreamRpcError,
    UpstreamUnavailable,
)
from broker.proxy.upstream.credentialed import send_credentialed
from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.credentials.errors import CredentialError
from broker.proxy.upstream.credentials.provider import UpstreamCredentials
from broker.proxy.upstream.http_client import (
    ConnectFailed,
    ConnectionLost,
    HttpClient,
    HttpClientError,
    Response,
)
from broker.proxy.upstream.jsonrpc import (
    INTERNAL_ERROR,
    NotificationRouter,
    answer_server_request,
    answer_within,
    cancellation_message,
    initialize_params,
    negotiated_version,
    notification_message,
    request_message,
    result_of,
)
from broker.proxy.upstream.spec import HttpServer
from broker.proxy.upstream.sse_parser import SseEventTooLarge, SseParser

logger = logging.getLogger(__name__)

SESSION_HEADER = "Mcp-Session-Id"
PROTOCOL_HEADER = "Mcp-Protocol-Version"
EVENT_STREAM = "text/event-stream"
DEFAULT_RETRY_SECONDS = 1.0
MAX_RESUME_ATTEMPTS = 3
MAX_LISTEN_FAILURES = 3
GATEWAY_FAILURES = frozenset({502, 504})
"""Statuses a proxy in front of the server answers when the request went on and its answer did not
come back: the server may have acted on it."""
STREAM_END_GRACE_SECONDS = 0.05
"""How long to wait for a response stream to end after its answer, so its connection can be reused."""
CLOSE_TIMEOUT_SECONDS = 2.0


class StreamableHttpConnection:
    def __init__(
        self,
        spec: HttpServer,
        on_notification: NotificationHandler,
        *,
        connect_timeout: float = 10.0,
        credentials: UpstreamCredentials | None = None,
    ) -> None:
        self.server = spec.name
        self._credentials = credentials
        self._url = spec.url
        self._configured_headers = dict(spec.headers)
        self._connect_timeout = connect_timeout
        self._network = spec.network
        self._router = NotificationRouter(spec.name, on_notification)
        self._http: HttpClient | None = None
        self._target = request_target(spec.url)
        self._post_headers = {
            "Accept": f"application/json, {EVENT_STREAM}",
            "Content-Type": "application/json",
        }
        self._session_id: str | None = None
        self._last_id = 0
        self._closed = asyncio.Event()
        self._close_reason: str | None = None
        self._background = BackgroundTasks(f"upstream '{spec.name}'")

    @property
    def close_reason(self) -> str | None:
        """Why the connection ended, once it has."""
        return self._close_reason

    @property
    def session_id(self) -> str | None:
        """The ``Mcp-Session-Id`` the server assigned, if it uses sessions."""
        return self._session_id

    async def start(self) -> JsonObject:
        # Reads have no deadline: answers take as long as tools run, and callers bound that.
        self._http = HttpClient(
            self._url,
            headers=self._configured_headers,
            connect_timeout=self._connect_timeout,
            ssl_context=None if self._network is None else self._network.ssl_context,
            proxy=None if self._network is None else self._network.proxy,
        )
        result = await self.request("initialize", initialize_params())
        self._post_headers[PROTOCOL_HEADER] = negotiated_version(self.server, result)
        await self.notify("notifications/initialized")
        # Wait for the notification stream, so nothing the server says from here on is missed.
        listening = asyncio.Event()
        self._background.spawn(self._listen(listening), name="notification stream")
        await listening.wait()
        if self._close_reason is not None:
            raise UpstreamUnavailable(self.server, self._close_reason)
        return result

    async def request(
        self,
        method: str,
        params: JsonObject | None,
        *,
        on_notification: NotificationHandler | None = None,
        timeout: float | None = None,
        caller: UpstreamCaller | None = None,
    ) -> JsonObject:
        if self._close_reason is not None:
            raise UpstreamUnavailable(self.server, self._close_reason)
        self._last_id = request_id = self._last_id + 1
        message = request_message(request_id, method, params)
        token = None if on_notification is None else self._router.watch_progress(params, on_notification)
        try:
            response = await answer_within(
                self.server,
                method,
                timeout,
                self._exchange(request_id, message, on_notification, caller),
                lambda reason: self._abandon(request_id, method, reason),
            )
        finally:
            if token is not None:
                self._router.unwatch(token)
        return result_of(self.server, response)

    async def notify(self, method: str, params: JsonObject | None = None) -> None:
        if self._close_reason is not None:
            raise UpstreamUnavailable(self.server, self._close_reason)
        try:
            async with await self._post(notification_message(method, params)) as response:
                if response.status not in (200, 202, 204):
                    raise await self._failure(response, "POST")
        except HttpClientError as exc:
            raise self._transport_failure(exc) from exc
        except CredentialError as exc:
            raise UpstreamUnavailable(self.server, f"no credential for the upstream: {exc}") from exc

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def aclose(self) -> None:
        self._lose("connection closed", expected=True)
        await self._background.cancel_all()
        http = self._http
        if http is None:
            return
        if self._session_id is not None:
            with contextlib.suppress(HttpClientError, TimeoutError, CredentialError):
                async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                    headers = await self._credentialed(self._post_headers, None)
                    response = await http.request("DELETE", self._target, headers=headers)
                    response.release()
        await http.aclose()

    async def _exchange(
        self,
        request_id: int,
        message: JsonObject,
        on_notification: NotificationHandler | None,
        caller: UpstreamCaller | None,
    ) -> JsonObject:
        try:
            async with await self._post(message, caller) as response:
                if self._session_id is None:
                    self._adopt_session(response)
                if response.status != 200:
                    failure = await self._failure(response, "POST")
                    if response.status in GATEWAY_FAILURES and type(failure) is UpstreamUnavailable:
                        raise UpstreamLost(self.server, failure.detail)
                    raise failure
                content_type = response.content_type
                if content_type == EVENT_STREAM:
                    try:
                        return await self._answer_from_streams(response, request_id, on_notification)
                    except UpstreamUnavailable as exc:
                        if isinstance(exc, UpstreamLost):
                            raise
                        # The server took the call (HTTP 200) and its answer never arrived.
                        raise UpstreamLost(self.server, exc.detail) from exc
                if content_type == "application/json":
                    return self._answer_from_json(await response.read(), request_id)
                raise UpstreamRpcError(
                    self.server, INTERNAL_ERROR, f"answer has unexpected Content-Type {content_type!r}"
                )
        except HttpClientError as exc:
            raise self._transport_failure(exc) from exc
        except SseEventTooLarge as exc:
            raise UpstreamRpcError(self.server, INTERNAL_ERROR, str(exc)) from None
        except CredentialError as exc:
            raise NoCredential(self.server, str(exc)) from exc

    async def _post(self, message: JsonObject, caller: UpstreamCaller | None = None) -> Response:
        body = exact_json.dumps(message)
        return await send_credentialed(
            self._session(), self._credentials, "POST", self._target, self._post_headers, caller, body
        )

    async def _get_stream(self, last_event_id: str | None) -> Response:
        headers = self._stream_headers(last_event_id)
        return await send_credentialed(self._session(), self._credentials, "GET", self._target, headers, None)

    async def _credentialed(self, base: dict[str, str], caller: UpstreamCaller | None) -> dict[str, str]:
        if self._credentials is None:
            return base
        return await self._credentials.headers(base, caller)

    def _adopt_session(self, response: Response) -> None:
        session_id = response.headers.get(SESSION_HEADER.lower())
        if session_id:
            self._session_id = session_id
            self._post_headers[SESSION_HEADER] = session_id

    def _answer_from_json(self, body: bytes, request_id: int) -> JsonObject:
        try:
            decoded = exact_json.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamRpcError(self.server, INTERNAL_ERROR, "answer is not valid JSON") from None
        # A batch is legal in protocol 2025-03-26; the answer is the element carrying our id.
        candidates = decoded if type(decoded) is list else [decoded]
        for candidate in candidates:
            if type(candidate) is dict and candidate.get("id") == request_id and "method" not in candidate:
                return candidate
        raise UpstreamRpcError(self.server, INTERNAL_ERROR, "answer does not contain the response")

    async def _answer_from_streams(
        self, response: Response, request_id: int, on_notification: NotificationHandler | None
    ) -> JsonObject:
        """Read the answer from the POST's event stream, resuming it if the server cuts it short."""
        parser = SseParser()
        answer = await self._read_stream(response, parser, request_id, on_notification)
        if answer is not None:
            # The stream ends right after the answer; waiting for that would delay the agent.
            response.release_when_complete(STREAM_END_GRACE_SECONDS)
            return answer
        attempts = 0
        while answer is None:
            last_event_id = parser.last_event_id
            if not last_event_id:
                raise UpstreamUnavailable(self.server, "response stream ended without an answer")
            attempts += 1
            if attempts > MAX_RESUME_ATTEMPTS:
                raise UpstreamUnavailable(self.server, "response stream keeps ending without an answer")
            delay = DEFAULT_RETRY_SECONDS if parser.retry_ms is None else parser.retry_ms / 1000
            await asyncio.sleep(delay)
            async with await self._get_stream(last_event_id) as resumed:
                if resumed.status != 200 or resumed.content_type != EVENT_STREAM:
                    raise await self._failure(resumed, "GET")
                events_before = parser.events_seen
                parser = parser.continued()
                answer = await self._read_stream(resumed, parser, request_id, on_notification)
                if parser.events_seen > events_before:
                    attempts = 0
        return answer

    async def _read_stream(
        self,
        response: Response,
        parser: SseParser,
        request_id: int,
        on_notification: NotificationHandler | None,
    ) -> JsonObject | None:
        async for chunk in response.chunks():
            for event in parser.feed(chunk):
                if not event.data or event.event != "message":
                    continue  # priming events carry only an id to resume from
                message = self._decode(event.data)
                if message is None:
                    continue
                if "method" not in message:
                    if message.get("id") == request_id:
                        return message
                    logger.debug("upstream '%s': stray response %r on a request stream", self.server, message)
                elif "id" in message:
                    self._reply_soon(answer_server_request(message))
                else:
                    await self._router.route(message, on_notification)
        return None

    async def _listen(self, listening: asyncio.Event) -> None:
        """Follow the GET stream of server-initiated messages for as long as the connection lives.

        Sets `listening` once the first attempt has settled: the stream is open, the server
        has none, or opening it failed.
        """
        try:
            await self._follow_stream(listening)
        finally:
            listening.set()

    async def _follow_stream(self, listening: asyncio.Event) -> None:
        last_event_id: str | None = None
        retry_seconds = DEFAULT_RETRY_SECONDS
        failures = 0
        while True:
            problem = ""
            try:
                async with await self._get_stream(last_event_id) as response:
                    if response.status == 404 and self._session_id is not None:
                        self._lose("the server ended the session (HTTP 404)")
                        return
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        # 405 is how the spec says "no such stream"; other refusals mean the same here.
                        logger.debug(
                            "upstream '%s': no notification stream (HTTP %d)", self.server, response.status
                        )
                        return
                    if response.status != 200 or response.content_type != EVENT_STREAM:
                        problem = f"HTTP {response.status} ({response.content_type})"
                    else:
                        failures = 0
                        listening.set()
                        parser = SseParser()
                        await self._read_stream(response, parser, 0, None)
                        last_event_id = parser.last_event_id or last_event_id
                        if parser.retry_ms is not None:
                            retry_seconds = parser.retry_ms / 1000
                        problem = "stream ended"
            except ConnectFailed as exc:
                self._lose(describe_transport_error(self._url, exc))
                return
            except HttpClientError as exc:
                problem = describe_transport_error(self._url, exc)
            except SseEventTooLarge as exc:
                problem = str(exc)
            except CredentialError as exc:
                problem = f"no credential for the upstream: {exc}"
            failures += 1
            listening.set()
            if failures >= MAX_LISTEN_FAILURES:
                self._lose(f"notification stream failed {failures} times in a row: {problem}")
                return
            logger.debug("upstream '%s': notification stream: %s; reopening", self.server, problem)
            await asyncio.sleep(retry_seconds)

    def _stream_headers(self, last_event_id: str | None) -> dict[str, str]:
        headers = {name: value for name, value in self._post_headers.items() if name != "Content-Type"}
        headers["Accept"] = EVENT_STREAM
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        return headers

    def _decode(self, data: str) -> JsonObject | None:
        try:
            message = exact_json.loads(data)
        except orjson.JSONDecodeError:
            logger.warning("upstream '%s': skipped an event that is not JSON: %.200r", self.server, data)
            return None
        if type(message) is not dict:
            logger.warning("upstream '%s': skipped an event that is not a JSON object", self.server)
            return None
        return message

    def _reply_soon(self, message: JsonObject) -> None:
        self._background.spawn(self._post_quietly(message), name="reply")

    def _abandon(self, request_id: int, method: str, reason: str) -> None:
        # The spec forbids cancelling initialize; a failed handshake closes the connection anyway.
        if self._close_reason is None and method != "initialize":
            self._background.spawn(
                self._post_quietly(cancellation_message(request_id, reason)), name="cancellation"
            )

    async def _post_quietly(self, message: JsonObject) -> None:
        try:
            async with await self._post(message) as response:
                if response.status not in (200, 202, 204):
                    logger.warning("upstream '%s': %s", self.server, await self._failure(response, "POST"))
        except (HttpClientError, UpstreamError, CredentialError) as exc:
            logger.warning("upstream '%s': could not deliver %s: %s", self.server, message.get("method"), exc)

    async def _failure(self, response: Response, verb: str) -> UpstreamError:
        """The error an unexpected HTTP status stands for."""
        status = response.status
        if status == 404 and self._session_id is not None:
            self._lose("the server ended the session (HTTP 404)")
            return UpstreamUnavailable(self.server, "the server ended the session (HTTP 404)")
        if 300 <= status < 400:
            location = response.headers.get("location", "?")
            return UpstreamUnavailable(
                self.server,
                f"{verb} {self._url} was redirected (HTTP {status}) to {location}; configure that URL",
            )
        body = await response.read(4096)
        if response.content_type == "application/json":
            with contextlib.suppress(orjson.JSONDecodeError):
                error = orjson.loads(body).get("error") if body.startswith(b"{") else None
                if type(error) is dict and isinstance(error.get("message"), str):
                    code = error.get("code")
                    return UpstreamRpcError(
                        self.server, code if isinstance(code, int) else INTERNAL_ERROR, error["message"]
                    )
        snippet = body[:300].decode("utf-8", "replace").strip()
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        return UpstreamUnavailable(
            self.server, f"{verb} {self._url} answered HTTP {status} {reason}: {snippet}".rstrip(": ")
        )

    def _transport_failure(self, exc: HttpClientError) -> UpstreamUnavailable:
        """Only a connection that was never made proves the request was not delivered."""
        reason = describe_transport_error(self._url, exc)
        self._lose(reason)
        if isinstance(exc, ConnectFailed):
            return UpstreamUnavailable(self.server, reason)
        return UpstreamLost(self.server, reason)

    def _session(self) -> HttpClient:
        if self._http is None:
            raise UpstreamUnavailable(self.server, "connection was never started")
        return self._http

    def _lose(self, reason: str, *, expected: bool = False) -> None:
        if self._close_reason is not None:
            return
        self._close_reason = reason
        if not expected:
            logger.warning("upstream '%s': %s", self.server, reason)
        self._closed.set()


def request_target(url: str) -> str:
    """The path and query of `url`, as the request line names them."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def describe_transport_error(url: str, exc: HttpClientError) -> str:
    if isinstance(exc, ConnectFailed):
        return f"cannot reach {url}: {exc}"
    if isinstance(exc, ConnectionLost):
        return f"{url} dropped the connection mid-answer" + (f" ({exc.hint})" if exc.hint else "")
    return f"talking to {url} failed: {exc}"
