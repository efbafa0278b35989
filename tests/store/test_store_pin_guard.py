"""PinGuard (broker/proxy/pinning.py) over the real pins store: which tools are pending, what their
calls get instead of the policy's answer, and fail-closed when the store cannot be read."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from broker.policy import Action, load_policy
from broker.proxy.pinning import NEW_PIN_RULE, PIN_RULE, PinGuard
from broker.proxy.upstream.pool import UpstreamTool
from broker.store.engine import create_store
from broker.store.sql import SqlApprovalStore
from broker.store.tool_pins import SqlToolPinStore
from tests.store.conftest import ManualClock

pytestmark = pytest.mark.anyio

POLICY = load_policy(
    'version: "1"\ndefault: allow\nrules:\n'
    "  - {tool: withdraw, action: require_approval, timeout: 60, approvers: [alice]}\n"
    "  - {tool: nuke, action: deny}\n"
)


def tool(name: str, description: str) -> UpstreamTool:
    return UpstreamTool("ex", name, f"ex__{name}", {"name": f"ex__{name}", "description": description})


def tools(description: str) -> list[UpstreamTool]:
    return [tool(name, description) for name in ("get_ticker", "withdraw", "nuke")]


async def test_changed_tools_get_the_definition_change_action_and_deny_stays_deny(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    guard = PinGuard(SqlToolPinStore(store), clock=clock)
    assert not await guard.refresh(tools("v1"))
    assert guard.pending == frozenset()
    assert await guard.refresh(tools("v2"))
    assert guard.pending == {"ex__get_ticker", "ex__withdraw", "ex__nuke"}

    ticker, withdraw, nuke = tools("v2")
    held = guard.override(ticker, POLICY.decide("get_ticker"), Action.REQUIRE_APPROVAL)
    assert held is not None and (held.action, held.rule) == (Action.REQUIRE_APPROVAL, PIN_RULE)
    assert "policy rule default applies to the old one" in held.reason
    kept = guard.override(withdraw, POLICY.decide("withdraw"), Action.REQUIRE_APPROVAL)
    assert kept is not None and kept.approval is not None and kept.approval.approvers == ("alice",)
    hidden = guard.override(ticker, POLICY.decide("get_ticker"), Action.HIDE)
    assert hidden is not None and hidden.action is Action.HIDE and guard.hides(ticker, Action.HIDE)
    assert guard.override(nuke, POLICY.decide("nuke"), Action.HIDE) is None

    await SqlToolPinStore(store).accept_all(by="alice", at=clock())
    assert await guard.refresh(tools("v2"), record=False)
    assert guard.pending == frozenset()
    assert guard.override(ticker, POLICY.decide("get_ticker"), Action.REQUIRE_APPROVAL) is None


async def test_an_unreadable_store_makes_every_tool_pending(tmp_path: Path, clock: ManualClock) -> None:
    before = set(threading.enumerate())
    gone = create_store(f"sqlite:///{tmp_path / 'missing' / 'broker.db'}")
    try:
        guard = PinGuard(SqlToolPinStore(gone), clock=clock)
        assert await guard.refresh(tools("v1"))
        assert guard.pending == {"ex__get_ticker", "ex__withdraw", "ex__nuke"}
    finally:
        await gone.close()
        # aiosqlite stops a connection that failed to open without awaiting it: its thread then
        # answers this test's event loop, which must still be running (else a warning in a later test).
        await anyio.to_thread.run_sync(join_new_threads, before)


def join_new_threads(before: set[threading.Thread]) -> None:
    for thread in set(threading.enumerate()) - before:
        if "_connection_worker_thread" in thread.name:
            thread.join(timeout=10)


async def test_strict_pinning_gives_new_tools_the_on_new_tool_action_until_accepted(
    store: SqlApprovalStore, clock: ManualClock
) -> None:
    strict = True
    guard = PinGuard(SqlToolPinStore(store), clock=clock, trust_new=lambda: not strict)
    assert await guard.refresh(tools("v1"))
    assert guard.pending == guard.never_accepted == {"ex__get_ticker", "ex__withdraw", "ex__nuke"}
    ticker, withdraw, _ = tools("v1")
    held = guard.override(ticker, POLICY.decide("get_ticker"), Action.HIDE, Action.REQUIRE_APPROVAL)
    assert held is not None and (held.action, held.rule) == (Action.REQUIRE_APPROVAL, NEW_PIN_RULE)
    assert "no one accepted its definition yet" in held.reason
    assert guard.hides(withdraw, Action.REQUIRE_APPROVAL, Action.HIDE)
    assert not guard.hides(withdraw, Action.HIDE, Action.REQUIRE_APPROVAL)
    # Under `on_new_tool: accept` a tool first seen under a strict policy is still not accepted.
    assert guard.hides(withdraw, Action.HIDE, None)

    await SqlToolPinStore(store).accept("get_ticker", server="ex", by="alice", at=clock())
    strict = False
    extra = tool("extra", "v1")
    assert await guard.refresh([*tools("v1"), extra])
    assert guard.never_accepted == {"ex__withdraw", "ex__nuke"}
    assert guard.override(ticker, POLICY.decide("get_ticker"), Action.HIDE, Action.HIDE) is None
    assert guard.override(extra, POLICY.decide("extra"), Action.HIDE, Action.HIDE) is None  # trusted now

    # A change of an accepted tool gets on_definition_change, whatever on_new_tool says.
    await guard.refresh([tool("get_ticker", "v2")])
    changed = guard.override(
        tool("get_ticker", "v2"), POLICY.decide("get_ticker"), Action.REQUIRE_APPROVAL, Action.HIDE
    )
    assert changed is not None and (changed.action, changed.rule) == (Action.REQUIRE_APPROVAL, PIN_RULE)
