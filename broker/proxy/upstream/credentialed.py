"""One HTTP request to an upstream with its credentials, shared by the streamable HTTP and SSE transports.

A request answered 401 was not acted on, so it is sent once more with a fresh token when the
credentials can get one (`UpstreamCredentials.rejected`). A credential that cannot be made
raises `CredentialError` before anything is sent, and is logged here: the agent sees it as a
tool error, and whoever runs the broker needs it too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.credentials.errors import CredentialError
from broker.proxy.upstream.credentials.provider import UpstreamCredentials
from broker.proxy.upstream.http_client import HttpClient, Response

logger = logging.getLogger(__name__)

UNAUTHORIZED_BODY_LIMIT = 4096
"""Read (and dropped) from a 401 answer so its connection can be reused."""


async def send_credentialed(
    http: HttpClient,
    credentials: UpstreamCredentials | None,
    verb: str,
    target: str,
    base: Mapping[str, str],
    caller: UpstreamCaller | None,
    body: bytes = b"",
) -> Response:
    if credentials is None:
        return await http.request(verb, target, headers=base, body=body)
    for attempt in (1, 2):
        try:
            headers = await credentials.headers(base, caller)
        except CredentialError as exc:
            for_whom = "the broker" if caller is None else f"agent '{caller.agent}'"
            logger.warning("upstream '%s': %s not sent for %s: %s", credentials.server, verb, for_whom, exc)
            raise
        response = await http.request(verb, target, headers=headers, body=body)
        if response.status != 401 or attempt == 2 or not credentials.rejected(headers):
            return response
        await response.read(UNAUTHORIZED_BODY_LIMIT)
        response.release()
    raise AssertionError("unreachable")
