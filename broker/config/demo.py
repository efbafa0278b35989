"""``broker serve --demo``: settings for trying the broker without writing any configuration."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from pathlib import Path

from broker.approvals.approvers import ApproverAccount
from broker.config.settings import BrokerSettings

DEMO_PASSWORD_HASH = "scrypt$32768$8$1$8-ltD1B6Bn3_E6yBhgKCoQ$N_Tn72YPBmeke6v1u6MuUVKhTgA5GMS_PTMZG3hf21g"
"""The demo approver's password, 'demo' (see README, Web inbox); the demo listens on localhost only."""


DEMO_APPROVER_TOKEN_SHA256 = hashlib.sha256(b"demo-approver-token").hexdigest()
"""The demo approver's API token, 'demo-approver-token' (broker.demo.agent.DEMO_APPROVER_TOKEN)."""


def demo_settings(*, environ: Mapping[str, str], state_dir: Path, port: int = 8765) -> BrokerSettings:
    """Embedded defaults: the bundled demo exchange over stdio, the bundled demo policy, SQLite, localhost only."""
    demo_dir = Path(__file__).resolve().parent.parent / "demo"
    return BrokerSettings(
        servers_document={
            "mcpServers": {
                "exchange": {
                    "command": sys.executable,
                    "args": ["-m", "broker.demo.exchange"],
                    # The exchange beside this broker's code, not another installed copy
                    "env": {"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
                }
            }
        },
        servers_source="<built-in demo>",
        policy_path=demo_dir / "policy.yaml",
        port=port,
        allow_anonymous=True,
        database_url=environ.get("BROKER_DATABASE_URL") or f"sqlite:///{state_dir / 'broker-demo.db'}",
        demo=True,
        # web inbox: demo / demo; decisions API and `broker approvals`: demo-approver-token
        approvers=(
            ApproverAccount(
                "demo", password_hash=DEMO_PASSWORD_HASH, token_sha256=DEMO_APPROVER_TOKEN_SHA256
            ),
        ),
    )
