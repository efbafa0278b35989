from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# The local OAuth 2.1 / OpenID Connect authorization server, for any test that asks for it.
from tests.authserver.fixture import auth_server  # noqa: E402, F401
