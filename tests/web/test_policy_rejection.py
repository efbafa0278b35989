"""A rejected policy reload is visible where people look: /readyz details and a banner in the inbox."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from broker.config.policy_file import PolicyFile
from tests.e2e.harness import running_broker
from tests.web.support import http_signed_in, web_settings

pytestmark = pytest.mark.anyio

GOOD = 'version: "1"\ndefault: deny\nrules:\n  - tool: get_ticker\n    action: allow\n'
BAD = 'version: "1"\ndefault: deny\nrules:\n  - tool: get_ticker\n    acton: allow\n'


def test_a_rejection_is_kept_until_the_file_is_good_again(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    policy = PolicyFile(path)
    in_force = policy.holder.current.revision
    path.write_text(BAD)
    assert policy.reload().error is not None
    rejection = policy.rejection
    assert rejection is not None and rejection.kept_revision == in_force
    assert "acton" in rejection.message and f"{path}:5" in rejection.message
    path.write_text(GOOD)  # back to the policy in force: nothing left to fix
    assert policy.reload().changed is False
    assert policy.rejection is None
    path.write_text(BAD)
    policy.reload()
    path.write_text(GOOD.replace("get_ticker", "get_balances"))
    assert policy.reload().changed is True
    assert policy.rejection is None


async def test_readyz_and_the_inbox_show_a_rejected_reload(tmp_path: Path) -> None:
    settings = web_settings(tmp_path)
    async with running_broker(settings) as running:
        with anyio.fail_after(30):
            async with http_signed_in(running, "alice") as http:
                assert (await http.get("/readyz")).json() == {"status": "ready"}
                assert "data-policy-rejected" not in (await http.get("/")).text
                settings.policy_path.write_text(BAD)
                running.broker.policy_file.reload()
                ready = await http.get("/readyz")
                assert ready.status_code == 200
                rejected = ready.json()["policy"]["rejected_reload"]
                assert "acton" in rejected["message"] and rejected["kept_revision"]
                page = (await http.get("/")).text
                assert "data-policy-rejected" in page and "acton" in page
