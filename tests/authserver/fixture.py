"""The `auth_server` fixture: a fresh local authorization server per test (see server.py).

tests/conftest.py imports it, so every test directory can ask for `auth_server`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.authserver.server import AuthServer


@pytest.fixture
def auth_server() -> Iterator[AuthServer]:
    with AuthServer() as server:
        yield server
