"""A request Slack signed is accepted once: sent again inside its five minutes, to the same broker
or to another replica on the same database, it is refused with 401 and reaches nothing."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from broker.approvals import ApprovalStatus
from broker.store.database import build_engine
from broker.store.migrate import upgrade
from tests.replicas.conftest import fresh_database
from tests.slack.fake_slack import FakeSlack
from tests.slack.rig import SLACK_USERS, SlackRig, block_actions, slack_broker

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'replicas.db'}"
        await upgrade(url)
        yield url
        return
    async with fresh_database("test_slack_replay") as url:
        await upgrade(url)
        yield url


async def approved_once(rig: SlackRig, approval_id: str) -> None:
    """The click was handled once: one approval by alice, and nobody was told "already decided"."""
    approval = await rig.broker.store.get(approval_id)
    assert approval is not None
    await rig.message_saying(approval, f"*Approved* by <@{SLACK_USERS['alice']}>")
    stored = await rig.broker.store.get(approval_id)
    assert stored is not None and stored.status is ApprovalStatus.APPROVED and stored.decided_by == "alice"
    trail = [record.event for record in await rig.broker.store.audit_trail(approval_id)]
    assert trail.count("approved") == 1
    assert rig.fake.calls_to("chat.postEphemeral") == []


async def test_a_replayed_click_is_refused_on_every_replica_and_decides_nothing_twice(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="broker.channels.slack.endpoint")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        FakeSlack() as fake,
        slack_broker(tmp_path / "a", fake, database_url=database_url) as one,
        slack_broker(tmp_path / "b", fake, database_url=database_url) as other,
    ):
        with anyio.fail_after(30):
            approval = await one.open_approval()
            await one.message_of(approval)
            click = block_actions(approval.id, SLACK_USERS["alice"], approve=True)
            stamp = int(time.time())
            first = await one.post_interaction(click, timestamp=stamp)
            assert first.status_code == 200
            for replica in (one, other):  # the very same bytes and signature, captured and sent again
                replayed = await replica.post_interaction(click, timestamp=stamp)
                assert replayed.status_code == 401
                assert "replayed" in replayed.json()["error"]
            await approved_once(one, approval.id)
    refusals = [record for record in caplog.records if "replayed" in record.getMessage()]
    assert len(refusals) == 2


async def test_of_one_request_sent_twice_at_once_exactly_one_is_accepted(tmp_path: Path) -> None:
    async with FakeSlack() as fake, slack_broker(tmp_path, fake) as rig:
        with anyio.fail_after(30):
            approval = await rig.open_approval()
            await rig.message_of(approval)
            click = block_actions(approval.id, SLACK_USERS["alice"], approve=True)
            stamp = int(time.time())
            answers: list[int] = []

            async def send() -> None:
                answers.append((await rig.post_interaction(click, timestamp=stamp)).status_code)

            async with anyio.create_task_group() as tasks:
                for _ in range(5):
                    tasks.start_soon(send)
            assert sorted(answers) == [200, 401, 401, 401, 401]
            await approved_once(rig, approval.id)
            # A new click (new timestamp and signature) is a new request, not a replay.
            again = await rig.post_interaction(click, timestamp=stamp + 1)
            assert again.status_code == 200


async def test_a_click_that_cannot_be_checked_for_replay_is_refused(tmp_path: Path) -> None:
    async with FakeSlack() as fake, slack_broker(tmp_path, fake) as rig:
        with anyio.fail_after(30):
            approval = await rig.open_approval()
            await rig.message_of(approval)
            engine = build_engine(rig.broker.settings.database_url)
            try:
                async with engine.begin() as conn:
                    await conn.exec_driver_sql("DROP TABLE seen_requests")
            finally:
                await engine.dispose()
            refused = await rig.click(approval.id, SLACK_USERS["alice"], approve=True)
            assert refused.status_code == 503
            assert "cannot check this request for replay" in refused.json()["error"]
            stored = await rig.broker.store.get(approval.id)
            assert stored is not None and stored.status is ApprovalStatus.PENDING
