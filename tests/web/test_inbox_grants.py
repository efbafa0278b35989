"""The web inbox's grants: the option beside Approve only where the rule allows grants, a grant
made from the form, and the /grants page that lists and revokes it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from broker.app import Broker
from broker.approvals.model import Approval, NewApproval
from tests.e2e.harness import make_settings, running_broker
from tests.web.support import POLICY, accounts_with_passwords, csrf_token, http_signed_in, order

pytestmark = pytest.mark.anyio

GRANT_POLICY = POLICY.replace(
    '    reason: "orders above 5 units need a second pair of eyes"\n',
    '    reason: "orders above 5 units need a second pair of eyes"\n'
    "    grant: {max: 30m, max_calls: 5, scope: [identical, matching]}\n",
)


async def hold(broker: Broker, tool: str, arguments: dict[str, object]) -> Approval:
    """Parks a call under the rule the policy in force decides it by, as the proxy would."""
    decision = broker.policy_file.holder.current.decide(
        tool, server="exchange", agent="trader", arguments=arguments
    )
    approval, _ = await broker.approvals.open(
        NewApproval(
            agent="trader",
            server="exchange",
            tool=tool,
            upstream_tool=tool,
            arguments=arguments,
            policy_revision=decision.revision,
            rule=decision.rule,
            rule_reason=decision.reason,
            timeout=timedelta(minutes=2),
            approvers=("@trading-leads",),
        )
    )
    return approval


async def test_a_grant_made_from_the_inbox_is_listed_and_revoked(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, GRANT_POLICY, {}, approvers=accounts_with_passwords())
    async with running_broker(settings) as running:
        broker = running.broker
        with anyio.fail_after(60):
            approval = await hold(broker, "place_order", order(7))
            cancel = await hold(broker, "binance_us_cust_cancel_order", {"order_id": "o-1"})
            async with http_signed_in(running, "alice") as http:
                page = (await http.get(f"/approvals/{approval.id}")).text
                assert (
                    "data-grant-option" in page
                    and 'max="30"' in page
                    and "any arguments this rule holds" in page
                )
                assert "data-grant-option" not in (await http.get(f"/approvals/{cancel.id}")).text
                token = csrf_token(page)

                bad = await http.post(
                    f"/approvals/{approval.id}/approve", data={"csrf_token": token, "grant_minutes": "soon"}
                )
                assert bad.status_code == 400 and "nothing was decided" in bad.text
                too_long = await http.post(
                    f"/approvals/{approval.id}/approve", data={"csrf_token": token, "grant_minutes": "45"}
                )
                assert too_long.status_code == 403 and "allows at most 30" in too_long.text

                approved = await http.post(
                    f"/approvals/{approval.id}/approve",
                    data={
                        "csrf_token": token,
                        "grant_minutes": "15",
                        "grant_scope": "matching",
                        "grant_calls": "3",
                    },
                )
                assert approved.status_code == 303, approved.text
                [grant] = await broker.grants.list()
                assert (grant.summary(), grant.created_by) == (
                    "grant for 15 min (3 calls, matching)",
                    ("alice",),
                )

                listing = (await http.get("/grants")).text
                assert f'data-grant="{grant.id}" data-state="active"' in listing and "0 / 3" in listing
                revoked = await http.post(f"/grants/{grant.id}/revoke", data={"csrf_token": token})
                assert revoked.status_code == 303
                assert (await broker.grants.list())[0].revoked_by == "alice"
                after = (await http.get("/grants")).text
                assert 'data-state="revoked"' in after and "revoked by alice" in after
                missing = await http.post("/grants/g-nope/revoke", data={"csrf_token": token})
                assert missing.status_code == 404
                forged = await http.post(f"/grants/{grant.id}/revoke", data={})
                assert forged.status_code == 403
