"""The live-update hub: fan-out to every open page, bounded queues, keepalives, cleanup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from broker.approvals import Approval, ApprovalStatus
from broker.channels.web.events import InboxEvents

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def approval(approval_id: str, status: ApprovalStatus = ApprovalStatus.PENDING) -> Approval:
    return Approval(
        id=approval_id,
        status=status,
        agent="trader",
        session_id=None,
        server="exchange",
        tool="place_order",
        upstream_tool="place_order",
        arguments={"quantity": 10},
        arguments_hash="0" * 64,
        request_key="k",
        policy_revision="r1",
        rule="rules[2]",
        rule_reason="big",
        approvers=(),
        channels=(),
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=5),
        version=1,
        decided_by="bob" if status is not ApprovalStatus.PENDING else None,
        decided_via="slack" if status is not ApprovalStatus.PENDING else None,
        decided_at=NOW if status is not ApprovalStatus.PENDING else None,
    )


async def test_every_subscriber_gets_every_change_as_a_small_json_event() -> None:
    hub = InboxEvents()
    with hub.subscribe() as first, hub.subscribe() as second:
        assert hub.subscriber_count == 2
        await hub.approval_opened(approval("a1"))
        await hub.approval_updated(approval("a1", ApprovalStatus.APPROVED))
        for stream in (first, second):
            with anyio.fail_after(5):
                opened = await stream.receive()
                updated = await stream.receive()
            assert opened.startswith(b"event: approval\ndata: {") and opened.endswith(b"\n\n")
            assert b'"kind":"opened"' in opened and b'"id":"a1"' in opened
            assert b'"status":"approved"' in updated and b'"decided_by":"bob"' in updated
            assert b'"decided_via":"slack"' in updated
            assert b"arguments" not in updated  # a page fetches details with its own credentials
    assert hub.subscriber_count == 0


async def test_a_subscriber_that_falls_behind_is_cut_off_without_slowing_the_others() -> None:
    hub = InboxEvents(queue_size=2)
    with hub.subscribe() as slow, hub.subscribe() as fast:
        for index in range(2):
            await hub.approval_opened(approval(f"a{index}"))
            with anyio.fail_after(5):
                await fast.receive()
        await hub.approval_opened(approval("a2"))
        assert hub.subscriber_count == 1
        with anyio.fail_after(5):
            assert b'"id":"a2"' in await fast.receive()
            # The slow one still gets what was queued, then its stream ends (the page reconnects and resyncs).
            assert [b'"id":"a0"' in await slow.receive(), b'"id":"a1"' in await slow.receive()] == [
                True,
                True,
            ]
            with pytest.raises(anyio.EndOfStream):
                await slow.receive()


async def test_a_quiet_stream_sends_keepalive_comments_and_ends_when_the_hub_closes() -> None:
    hub = InboxEvents(keepalive_seconds=0.01)
    with hub.subscribe() as stream:
        frames = hub.frames(stream)
        with anyio.fail_after(5):
            assert (await frames.__anext__()).startswith(b"retry: ")
            assert await frames.__anext__() == b": keepalive\n\n"
            await hub.approval_opened(approval("a1"))
            assert b'"id":"a1"' in await frames.__anext__()
            hub.close()
            with pytest.raises(StopAsyncIteration):
                await frames.__anext__()
        await frames.aclose()
    assert hub.subscriber_count == 0


async def test_waiting_for_subscribers_wakes_on_connect_and_disconnect() -> None:
    hub = InboxEvents()
    connected = anyio.Event()

    async def page() -> None:
        with hub.subscribe():
            await connected.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(page)
            await hub.wait_for_subscribers(1)
            connected.set()
            await hub.wait_for_subscribers(0)
