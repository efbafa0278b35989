"""Talking to a running broker's API with an approver token (``broker approvals``,
``broker grants``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from broker.cli.common import fail


def add_api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the broker's base URL (default: $BROKER_URL or http://127.0.0.1:8765)")
    parser.add_argument("--token", help="approver token (default: $BROKER_APPROVER_TOKEN)")


def decisions_client(args: argparse.Namespace) -> Any:
    import httpx

    token = args.token or os.environ.get("BROKER_APPROVER_TOKEN")
    if not token:
        fail("an approver token is needed: --token or BROKER_APPROVER_TOKEN")
    url = args.url or os.environ.get("BROKER_URL", "http://127.0.0.1:8765")
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def api_call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    with decisions_client(args) as http:
        try:
            response = http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            fail(f"cannot reach the broker at {http.base_url}: {exc}")
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        if isinstance(detail, dict):
            detail = detail.get("message", detail)
        fail(f"{response.status_code}: {detail}")
    return response.json()
