"""An upstream MCP server reached over the legacy HTTP+SSE transport (protocol 2024-11-05).

A GET opens an event stream whose first ``endpoint`` event names the URL to POST messages
to; every response, notification and server request then arrives on that one stream.

Credentials (`broker.proxy.upstream.credentials`) go on the GET (the broker's own, as for its
handshake) and on every POST; a POST carrying a ``tools/call`` for an agent carries that agent's
headers or exchanged token. A credential that cannot be made keeps the message from being sent.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urljoin, urlsplit

import orjson

from broker.proxy import exact_json
from broker.proxy.upstream.base import (
    JsonObject,
    NoCredential,
    NotificationHandler,
    UpstreamLost,
    UpstreamUnavailable,
)
from broker.proxy.upstream.credentialed import send_credentialed
from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.credentials.errors import CredentialError
from broker.proxy.upstream.credentials.provider import UpstreamCredentials
from broker.proxy.upstream.http import EVENT_STREAM, describe_transport_error, request_target
from broker.proxy.upstream.http_client import ConnectFailed, HttpClient, HttpClientError, Response
from broker.proxy.upstream.jsonrpc import initialize_params, negotiated_version
from broker.proxy.upstream.multiplexed import MultiplexedConnection
from broker.proxy.upstream.spec import SseServer
from broker.proxy.upstream.sse_parser import SseEventTooLarge, SseParser

logger = logging.getLogger(__name__)

_JSON_HEADERS = {"Content-Type": "application/json"}


class SseConnection(MultiplexedConnection):
    def __init__(
        self,
        spec: SseServer,
        on_notification: NotificationHandler,
        *,
        connect_timeout: float = 10.0,
        credentials: UpstreamCredentials | None = None,
    ) -> None:
        super().__init__(spec.name, on_notification)
        self._credentials = credentials
        self._url = spec.url
        self._configured_headers = dict(spec.headers)
        self._connect_timeout = connect_timeout
        self._network = spec.network
        self._http: HttpClient | None = None
        self._endpoint: asyncio.Future[str] | None = None
        self._endpoint_url = ""

    async def start(self) -> JsonObject:
        self._http = HttpClient(
            self._url,
            headers=self._configured_headers,
            connect_timeout=self._connect_timeout,
            ssl_context=None if self._network is None else self._network.ssl_context,
            proxy=None if self._network is None else self._network.proxy,
        )
        try:
            stream = await send_credentialed(
                self._http,
                self._credentials,
                "GET",
                request_target(self._url),
                {"Accept": EVENT_STREAM, "Cache-Control": "no-cache"},
                None,
            )
        except HttpClientError as exc:
            raise UpstreamUnavailable(self.server, describe_transport_error(self._url, exc)) from exc
        except CredentialError as exc:
            raise UpstreamUnavailable(self.server, f"no credential for the upstream: {exc}") from exc
        if stream.status != 200 or stream.content_type != EVENT_STREAM:
            stream.release()
            raise UpstreamUnavailable(
                self.server,
                f"GET {self._url} answered HTTP {stream.status} ({stream.content_type}), not an event stream",
            )
        self._endpoint = asyncio.get_running_loop().create_future()
        self._background.spawn(self._read_events(stream), name="event stream")
        self._endpoint_url = await self._endpoint
        result = await self.request("initialize", initialize_params())
        negotiated_version(self.server, result)
        await self.notify("notifications/initialized")
        return result

    async def _send(self, message: JsonObject, caller: UpstreamCaller | None = None) -> None:
        if self._http is None or not self._endpoint_url:
            raise UpstreamUnavailable(self.server, "connection was never started")
        try:
            async with await send_credentialed(
                self._http,
                self._credentials,
                "POST",
                request_target(self._endpoint_url),
                _JSON_HEADERS,
                caller,
                exact_json.dumps(message),
            ) as response:
                if response.status in (200, 202, 204):
                    await response.read()
                    return
                body = (await response.read(300)).decode("utf-8", "replace").strip()
                problem = f"POST {self._endpoint_url} answered HTTP {response.status}: {body}".rstrip(": ")
                if response.status == 404:
                    # The server no longer knows this stream's session.
                    self._lose(problem)
                raise UpstreamUnavailable(self.server, problem)
        except HttpClientError as exc:
            reason = describe_transport_error(self._endpoint_url, exc)
            self._lose(reason)
            if isinstance(exc, ConnectFailed):
                raise UpstreamUnavailable(self.server, reason) from exc
            raise UpstreamLost(self.server, reason) from exc  # the POST went out: it may have been read
        except CredentialError as exc:
            raise NoCredential(self.server, str(exc)) from exc

    def _send_soon(self, message: JsonObject) -> None:
        self._background.spawn(self._send_quietly(message), name="send")

    async def _send_quietly(self, message: JsonObject) -> None:
        try:
            await self._send(message)
        except UpstreamUnavailable as exc:
            logger.warning("upstream '%s': could not deliver %s: %s", self.server, message.get("method"), exc)

    async def _read_events(self, stream: Response) -> None:
        reason = f"{self._url} ended the event stream"
        try:
            async with stream:
                parser = SseParser()
                async for chunk in stream.chunks():
                    for event in parser.feed(chunk):
                        if event.event == "endpoint":
                            self._adopt_endpoint(event.data)
                        elif event.event == "message" and event.data:
                            try:
                                message = exact_json.loads(event.data)
                            except orjson.JSONDecodeError:
                                logger.warning(
                                    "upstream '%s': skipped an event that is not JSON: %.200r",
                                    self.server,
                                    event.data,
                                )
                                continue
                            await self._receive(message)
        except HttpClientError as exc:
            reason = describe_transport_error(self._url, exc)
        except SseEventTooLarge as exc:
            reason = str(exc)
        except UpstreamUnavailable as exc:
            reason = exc.detail
        finally:
            self._lose(reason)
            if self._endpoint is not None and not self._endpoint.done():
                self._endpoint.set_exception(UpstreamUnavailable(self.server, reason))

    def _adopt_endpoint(self, data: str) -> None:
        endpoint = urljoin(self._url, data.strip())
        source, target = urlsplit(self._url), urlsplit(endpoint)
        if (source.scheme, source.netloc) != (target.scheme, target.netloc):
            # Following it would send the configured credentials to another origin.
            raise UpstreamUnavailable(self.server, f"server named an endpoint on another origin: {endpoint}")
        if self._endpoint is not None and not self._endpoint.done():
            self._endpoint.set_result(endpoint)
        elif endpoint != self._endpoint_url:
            logger.warning("upstream '%s': ignoring a second endpoint event (%s)", self.server, endpoint)

    async def aclose(self) -> None:
        self._lose("connection closed", expected=True)
        if self._endpoint is not None and not self._endpoint.done():
            self._endpoint.cancel()
        await self._background.cancel_all()
        if self._http is not None:
            await self._http.aclose()
