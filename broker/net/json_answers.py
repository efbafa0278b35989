"""Reading the JSON object an identity provider answers (metadata, JWKS, introspection)."""

from __future__ import annotations

from typing import Any

import httpx


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The body of a 200 answer as a JSON object; ValueError saying what is wrong otherwise."""
    if response.status_code != 200:
        raise ValueError(f"answered HTTP {response.status_code}")
    try:
        document = response.json()
    except ValueError:
        raise ValueError("did not answer JSON") from None
    if not isinstance(document, dict):
        raise ValueError("did not answer a JSON object")
    return document
