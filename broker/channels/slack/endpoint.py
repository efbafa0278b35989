"""The Slack interactivity request URL: ``POST /slack/interactions``.

Fails closed: a request that does not verify (signature, timestamp) gets 401 and reaches
nothing; a verified one is answered 200 at once and handled in the background. A verified
request is accepted once: its signature is recorded in `SeenRequests` (shared by every replica
on the database) until it would be stale anyway, and the same request sent again, to this
replica or another, gets 401. When the record cannot be made (StoreUnavailable) the request
is refused with 503: a replay could not be told from a first delivery.

Socket Mode (broker.channels.slack.socket_mode) does not come through here: its payloads are
not signed, they arrive over the websocket the broker opened with its app-level token.

No `from __future__ import annotations` here: FastAPI reads the route signature at runtime.
"""

import json
import logging
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from broker.approvals.ports import SeenRequests, StoreUnavailable
from broker.channels.slack.errors import MalformedInteraction, ReplayedRequest, UnverifiedRequest
from broker.channels.slack.interactions import InteractionHandler
from broker.channels.slack.signing import RequestVerifier

logger = logging.getLogger(__name__)

INTERACTIONS_PATH = "/slack/interactions"
MAX_BODY_BYTES = 1_000_000
"""Slack's interaction payloads are a few kilobytes; anything this large is not from Slack."""


def interaction_payload(body: bytes) -> dict[str, Any]:
    """The JSON object in a form-encoded ``payload=<json>`` body."""
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedInteraction(f"the body is not a form: {exc}") from exc
    values = form.get("payload")
    if not values or len(values) != 1:
        raise MalformedInteraction("the form has no single 'payload' field")
    try:
        payload = json.loads(values[0])
    except json.JSONDecodeError as exc:
        raise MalformedInteraction(f"'payload' is not JSON: {exc.msg}") from exc
    if not isinstance(payload, dict):
        raise MalformedInteraction("'payload' is not a JSON object")
    return payload


def build_slack_router(
    verifier: RequestVerifier, handler: InteractionHandler, seen: SeenRequests
) -> APIRouter:
    router = APIRouter(tags=["slack"])

    @router.post(INTERACTIONS_PATH)
    async def interactions(request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return JSONResponse({"error": "request body too large"}, status_code=413)
        client = request.client.host if request.client else "unknown"
        try:
            verified = verifier.verify(
                timestamp=request.headers.get("x-slack-request-timestamp"),
                signature=request.headers.get("x-slack-signature"),
                body=bytes(body),
            )
            if not await seen.first_seen(verified.digest, verified.expires_at):
                raise ReplayedRequest("this signed request was already accepted once: replayed")
        except UnverifiedRequest as exc:
            logger.warning("refused a Slack interaction from %s: %s", client, exc)
            return JSONResponse({"error": f"unverified Slack request: {exc}"}, status_code=401)
        except StoreUnavailable as exc:
            logger.error("refused a Slack interaction from %s: cannot check it for replay: %s", client, exc)
            return JSONResponse(
                {"error": "the broker cannot check this request for replay right now; try again"},
                status_code=503,
            )
        try:
            handler.accept(interaction_payload(bytes(body)))
        except MalformedInteraction as exc:
            logger.warning("refused a malformed Slack interaction: %s", exc)
            return JSONResponse({"error": f"malformed interaction: {exc}"}, status_code=400)
        return Response(status_code=200)

    return router
