"""swap_slack_message: the compare-and-set that lets exactly one replica claim a Slack post."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from broker.approvals.audit import AuditEvent
from broker.approvals.ports import ApprovalNotFound
from broker.store.sql import SqlApprovalStore

from .builders import S, create, walk_to

pytestmark = pytest.mark.anyio


async def test_the_swap_applies_only_while_the_ts_is_what_the_caller_saw(store: SqlApprovalStore) -> None:
    approval = await create(store)

    claimed, won = await store.swap_slack_message(approval.id, expected_ts=None, channel=None, ts="claim:a:1")
    assert won and (claimed.slack_channel, claimed.slack_ts, claimed.version) == (None, "claim:a:1", 2)

    current, won = await store.swap_slack_message(approval.id, expected_ts=None, channel=None, ts="claim:b:1")
    assert not won and current == claimed

    stored, won = await store.swap_slack_message(
        approval.id,
        expected_ts="claim:a:1",
        channel="C0APPROVALS",
        ts="1700000000.000001",
        audit=AuditEvent("notified", "slack", {"status": "pending"}),
    )
    assert won and (stored.slack_channel, stored.slack_ts, stored.version) == (
        "C0APPROVALS",
        "1700000000.000001",
        3,
    )
    assert [record.event for record in await store.audit_trail(approval.id)] == ["requested", "notified"]

    current, won = await store.swap_slack_message(
        approval.id,
        expected_ts="claim:a:1",
        channel=None,
        ts=None,
        audit=AuditEvent("notified", "slack", {"status": "pending"}),
    )
    assert not won and current == stored
    assert [record.event for record in await store.audit_trail(approval.id)] == ["requested", "notified"]


async def test_the_swap_returns_the_row_with_the_latest_state(store: SqlApprovalStore) -> None:
    """Whoever stores the message learns in the same statement whether the approval moved on."""
    approval = await create(store)
    await store.swap_slack_message(approval.id, expected_ts=None, channel=None, ts="claim:a:1")
    await walk_to(store, approval, S.DENIED)

    stored, won = await store.swap_slack_message(
        approval.id, expected_ts="claim:a:1", channel="C1", ts="1700000000.000001"
    )

    assert won and stored.status is S.DENIED and stored.slack_ts == "1700000000.000001"


async def test_the_swap_refuses_bad_values_and_unknown_approvals(store: SqlApprovalStore) -> None:
    approval = await create(store)
    with pytest.raises(ValueError, match="slack_ts"):
        await store.swap_slack_message(approval.id, expected_ts=None, channel=None, ts=17)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected_ts"):
        await store.swap_slack_message(approval.id, expected_ts=17, channel=None, ts="1")  # type: ignore[arg-type]
    with pytest.raises(ApprovalNotFound):
        await store.swap_slack_message("apv-missing", expected_ts=None, channel=None, ts="1")


async def test_replicas_racing_for_one_post_have_one_winner(
    open_store: Callable[[], SqlApprovalStore],
) -> None:
    replicas = [open_store() for _ in range(4)]
    approval = await create(replicas[0])
    outcomes: list[bool] = []
    start = anyio.Event()

    async def claim(store: SqlApprovalStore, writer: int) -> None:
        await start.wait()
        for _ in range(5):
            _, won = await store.swap_slack_message(
                approval.id, expected_ts=None, channel=None, ts=f"claim:{writer}:1"
            )
            outcomes.append(won)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for writer, store in enumerate(replicas):
                group.start_soon(claim, store, writer)
            start.set()

    assert outcomes.count(True) == 1 and len(outcomes) == 20
    final = await replicas[0].get(approval.id)
    assert final is not None and final.slack_ts is not None and final.version == 2
