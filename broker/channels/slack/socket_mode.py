"""Socket Mode: Slack pushes interactions over a websocket the broker opens, for brokers without a
public URL. The app-level token authenticates the connection, so there is no request signature
(and nothing for the HTTP endpoint's replay check to remember: a captured envelope cannot be sent
into a websocket only Slack and this broker hold); every envelope is acknowledged at once and its
payload goes to the same handler as HTTP."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from broker.channels.slack.errors import MalformedInteraction
from broker.channels.slack.interactions import InteractionHandler

logger = logging.getLogger(__name__)


@asynccontextmanager
async def socket_mode_connection(
    app_token: str, web_client: AsyncWebClient, handler: InteractionHandler, *, ping_interval: float = 10.0
) -> AsyncIterator[SocketModeClient]:
    """Connected (or connecting: an unreachable Slack never holds up the broker's start) while open."""
    if not app_token:
        raise ValueError("Socket Mode needs an app-level token (xapp-...)")
    client = SocketModeClient(app_token=app_token, web_client=web_client, ping_interval=ping_interval)

    async def on_request(socket: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        await socket.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
        if request.type != "interactive":
            return
        try:
            handler.accept(request.payload)
        except MalformedInteraction as exc:
            logger.warning("refused a malformed Slack interaction over Socket Mode: %s", exc)

    client.socket_mode_request_listeners.append(on_request)
    try:
        async with anyio.create_task_group() as tasks:
            # The SDK's connect() keeps retrying until Slack answers; it must not block startup.
            tasks.start_soon(client.connect)
            yield client
            tasks.cancel_scope.cancel()
    finally:
        await client.close()  # type: ignore[no-untyped-call]
