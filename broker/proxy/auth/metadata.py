"""RFC 9728 protected resource metadata, served where MCP clients look for it.

`GET /.well-known/oauth-protected-resource` and the path-inserted form for the resource (for
`https://broker.example.com/mcp`: `/.well-known/oauth-protected-resource/mcp`) answer

    {"resource": <resource URI>, "authorization_servers": [<issuer>],
     "scopes_supported": [<required scopes>], "bearer_methods_supported": ["header"],
     "resource_name": ...}

and the 401 challenges point at the path-inserted URL in `resource_metadata`.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from starlette.types import Receive, Scope, Send

from broker.config.oauth import OAuthSettings

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def metadata_document(settings: OAuthSettings) -> dict[str, Any]:
    return {
        "resource": settings.resource,
        "authorization_servers": [settings.issuer],
        "scopes_supported": list(settings.required_scopes),
        "bearer_methods_supported": ["header"],
        "resource_name": settings.resource_name,
    }


class ProtectedResourceMetadata:
    """ASGI app for the well-known paths; `paths` tells the router which requests are its."""

    def __init__(self, settings: OAuthSettings) -> None:
        self._body = json.dumps(metadata_document(settings)).encode()
        resource_path = urlsplit(settings.resource).path.rstrip("/")
        self.paths = frozenset({WELL_KNOWN, WELL_KNOWN + resource_path})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        allowed = scope["method"] in ("GET", "HEAD")
        body = self._body if allowed else b'{"error": "method not allowed"}'
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            # Browser-based MCP clients read this cross-origin.
            (b"access-control-allow-origin", b"*"),
            (b"cache-control", b"max-age=300"),
        ]
        if not allowed:
            headers.append((b"allow", b"GET, HEAD"))
        await send({"type": "http.response.start", "status": 200 if allowed else 405, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
