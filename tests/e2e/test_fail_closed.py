"""Fail closed: when the approval store becomes unreachable, no call goes through until it is back,
and a broker whose database is not at its schema is not ready.

The streams below send an allowed `place_order` every 100 ms while the database goes away and
comes back. Each order carries its call's number as its quantity, so the demo exchange's own
book says exactly which calls reached the upstream.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import make_url

from broker.approvals.health import StoreHealth
from broker.config.settings import ApprovalSettings
from broker.store.database import build_engine
from tests.e2e.harness import RunningBroker, exchange_server, make_settings, running_broker
from tests.store.conftest import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.anyio

POLICY = '{"version": "1", "default": "allow"}'
STORE_DOWN = "cannot reach its approval store"
CADENCE = 0.1


@pytest.fixture
async def postgres_database() -> AsyncIterator[str]:
    name = f"test_failclosed_{secrets.token_hex(4)}"
    admin = build_engine(POSTGRES_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.dispose()


async def set_reachable(name: str, reachable: bool) -> None:
    admin = build_engine(POSTGRES_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(reachable).lower()}')
            if not reachable:
                await conn.exec_driver_sql(
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                )
    finally:
        await admin.dispose()


@pytest.mark.postgres
async def test_an_unreachable_store_stops_every_call_until_it_returns(
    tmp_path: Path, postgres_database: str
) -> None:
    url = make_url(POSTGRES_ADMIN_URL).set(database=postgres_database).render_as_string(hide_password=False)
    settings = replace(make_settings(tmp_path, POLICY, exchange_server()), database_url=url)
    async with running_broker(settings) as running:
        with anyio.fail_after(60):
            async with running.client() as client:
                assert not (await client.call_tool("get_balances", {})).is_error
                await set_reachable(postgres_database, False)
                await running.broker.approvals.wait_for_store(available=False)
                refused = await client.call_tool("get_balances", {})
                assert refused.is_error
                assert "cannot reach its approval store" in refused.content[0].text  # type: ignore[union-attr]
                async with running.raw(agent=None) as http:
                    assert (await http.get("/readyz")).status_code == 503
                await set_reachable(postgres_database, True)
                await running.broker.approvals.wait_for_store(available=True)
                assert not (await client.call_tool("get_balances", {})).is_error


async def test_readiness_follows_the_schema_revision_without_a_log_line_per_probe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, POLICY, exchange_server())
    database = make_url(settings.database_url).database
    assert database is not None
    async with running_broker(settings) as running, running.raw(agent=None) as http:
        with anyio.fail_after(30):
            caplog.clear()
            with caplog.at_level(logging.INFO):
                for _ in range(3):
                    assert (await http.get("/readyz")).status_code == 200
            assert not [record for record in caplog.records if record.name.startswith("alembic")]

            with sqlite3.connect(database) as db:
                (head,) = db.execute("SELECT version_num FROM broker_alembic_version").fetchone()
                db.execute("UPDATE broker_alembic_version SET version_num = '0001'")
            behind = await http.get("/readyz")
            assert behind.status_code == 503 and "newest migration" in behind.json()["store"]
            with sqlite3.connect(database) as db:
                db.execute("UPDATE broker_alembic_version SET version_num = ?", (head,))
            assert (await http.get("/readyz")).status_code == 200


@dataclass
class Sent:
    number: int
    phase: str
    """"up"; "going": the database is being taken away, the broker may not know yet; "down": the
    broker had seen it fail when this was sent; "returning": the database is being given back;
    "back": it was back before this was sent."""
    forwarded: bool | None = None


@dataclass
class OrderStream:
    health: StoreHealth
    phase: str = "up"
    calls: list[Sent] = field(default_factory=list)
    answered: anyio.Event = field(default_factory=anyio.Event)

    async def run(self, running: RunningBroker) -> None:
        async with running.client() as client:
            while True:
                sent = Sent(
                    len(self.calls) + 1,
                    "down" if self.phase == "going" and not self.health.up else self.phase,
                )
                self.calls.append(sent)
                result = await client.call_tool(
                    "place_order", {"symbol": "BTCUSD", "side": "buy", "quantity": sent.number, "price": 1.0}
                )
                text = result.content[0].text  # type: ignore[union-attr]
                assert not result.is_error or STORE_DOWN in text, text
                sent.forwarded = not result.is_error
                self.answered.set()
                self.answered = anyio.Event()
                await anyio.sleep(CADENCE)

    async def answers(self, phase: str, count: int) -> list[Sent]:
        """Waits until `count` calls sent in `phase` were answered."""
        while len(done := [c for c in self.calls if c.phase == phase and c.forwarded is not None]) < count:
            await self.answered.wait()
        return done


async def outage_and_return(
    running: RunningBroker, take_away: Callable[[], Awaitable[None]], give_back: Callable[[], Awaitable[None]]
) -> None:
    health = running.broker.store_health
    stream = OrderStream(health)
    async with anyio.create_task_group() as tasks, running.client() as client:
        tasks.start_soon(stream.run, running)
        assert all(call.forwarded for call in await stream.answers("up", 3))

        stream.phase = "going"
        await take_away()
        await health.wait(up=False)
        await stream.answers("down", 5)
        async with running.raw(agent=None) as http:
            assert (await http.get("/readyz")).status_code == 503
        # Answered before the database came back; calls still on their way then prove nothing.
        known_down = [call for call in stream.calls if call.phase == "down" and call.forwarded is not None]

        stream.phase = "returning"
        await give_back()
        stream.phase = "back"
        async with running.raw(agent=None) as http:
            # Ready at once, and the very next call goes through: nobody waits for a sweep.
            assert (await http.get("/readyz")).status_code == 200
        first_back, *_ = await stream.answers("back", 3)
        tasks.cancel_scope.cancel()

        assert first_back.forwarded
        assert not any(call.forwarded for call in known_down)
        book = await client.call_tool("list_open_orders", {})
        assert not book.is_error
        reached = {int(order["quantity"]) for order in book.structured_content["result"]}  # type: ignore[index]
        # The upstream saw exactly the calls answered as forwarded, and none sent while known down.
        assert reached == {call.number for call in stream.calls if call.forwarded}
        assert not reached & {call.number for call in known_down}


@pytest.mark.postgres
async def test_postgres_outage_refuses_calls_from_the_moment_it_is_seen_and_not_a_moment_after_it_ends(
    tmp_path: Path, postgres_database: str
) -> None:
    url = make_url(POSTGRES_ADMIN_URL).set(database=postgres_database).render_as_string(hide_password=False)
    # No sweep during the test: the notification connection sees the outage, a probe sees the return.
    settings = replace(
        make_settings(tmp_path, POLICY, exchange_server()),
        database_url=url,
        approvals=ApprovalSettings(sweep_interval=3600),
    )
    async with running_broker(settings) as running:
        with anyio.fail_after(60):
            assert running.broker.replica_feed is not None
            await running.broker.replica_feed.wait_connected()
            await outage_and_return(
                running,
                lambda: set_reachable(postgres_database, False),
                lambda: set_reachable(postgres_database, True),
            )


async def test_sqlite_file_taken_away_refuses_calls_until_it_is_back(tmp_path: Path) -> None:
    """Replacing the file with a directory: pooled connections would carry on with the old file,
    which only a fresh open at the path notices (the probe, at the sweep interval while up)."""
    folder = tmp_path / "db"
    folder.mkdir()
    settings = replace(
        make_settings(tmp_path, POLICY, exchange_server()),
        database_url=f"sqlite:///{folder / 'broker.db'}",
        approvals=ApprovalSettings(sweep_interval=0.5),
    )
    away = tmp_path / "db-away"

    async def take_away() -> None:
        folder.rename(away)
        (folder / "broker.db").mkdir(parents=True)

    async def give_back() -> None:
        (folder / "broker.db").rmdir()
        folder.rmdir()
        away.rename(folder)

    async with running_broker(settings) as running:
        with anyio.fail_after(60):
            await outage_and_return(running, take_away, give_back)
