"""Releasing an approved call: the `CallReleaser` that forwards it through the gateway's one door.

It re-checks the policy in force and tells the service whether the call did not run
(`ReleaseFailed`) or may have run (`ReleaseOutcomeUnknown`); see `broker.approvals.service`.
A call under spend limits reserves its spend here, at release (broker/proxy/checks/spend.py):
over a limit, with an unusable amount or with the ledger down, the release fails with that reason
and nothing is forwarded.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from broker.approvals import Approval
from broker.approvals.releasing import CallReleaser, ReleaseFailed, ReleaseOutcomeUnknown
from broker.approvals.spending import Reservation
from broker.policy.decision import Decision
from broker.policy.holder import PolicyHolder
from broker.proxy.checks.spend import SpendBlocked, SpendCheck
from broker.proxy.tool_risks import ToolRisks
from broker.proxy.upstream.base import (
    JsonObject,
    MalformedResult,
    UpstreamError,
    UpstreamRpcError,
    may_have_run,
)
from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.pool import UpstreamPool


class UpstreamReleaser(CallReleaser):
    """Forwards approved calls through the same door as allowed ones, after re-checking the policy."""

    def __init__(
        self,
        *,
        upstreams: UpstreamPool,
        policy: PolicyHolder,
        forward: Any,
        spend: SpendCheck | None = None,
        risks: ToolRisks | None = None,
    ) -> None:
        self._upstreams = upstreams
        self._policy = policy
        self._risks = risks
        self._forward = forward
        self._spend = spend

    def can_release(self, approval: Approval) -> bool:
        return self._upstreams.is_connected(approval.server)

    async def _reserve(self, approval: Approval, decision: Decision) -> Reservation | None:
        if not decision.limits:
            return None
        if self._spend is None:
            raise ReleaseFailed("the call is under a spend limit and this broker has no spend ledger")
        reserved = await self._spend.reserve(
            decision,
            agent=approval.agent,
            session=approval.session_id,
            tool=approval.tool,
            arguments=approval.arguments,
        )
        if isinstance(reserved, SpendBlocked):
            raise ReleaseFailed(reserved.text)
        return reserved

    async def release(self, approval: Approval) -> JsonObject:
        tool = self._upstreams.resolve(approval.tool)
        if tool is None or tool.name != approval.upstream_tool or tool.server != approval.server:
            raise ReleaseFailed(
                f"the tool '{approval.tool}' is no longer offered by upstream '{approval.server}'"
            )
        policy = self._policy.current
        decision = policy.decide(
            tool.name,
            server=tool.server,
            agent=approval.agent,
            arguments=approval.as_decided(),
            # A reload may have made the tool's risk default deny: that must stop the release too.
            risk=self._risks.of(tool) if self._risks is not None and policy.rates_risk else None,
        )
        refusal = decision.refusal()
        if refusal is not None:
            raise ReleaseFailed(f"{refusal}; it was not forwarded")
        reservation = await self._reserve(approval, decision)
        try:
            async with self._spend.settled(reservation) if self._spend is not None else nullcontext():
                # The agent that asked, so per-agent upstream credentials name it, not the approver.
                # Its claims fill claim headers as they would have at once; its token was never kept.
                caller = UpstreamCaller(approval.agent, approval.claims or {})
                result: JsonObject = await self._forward(tool, dict(approval.arguments), caller=caller)
        except UpstreamRpcError as exc:
            raise ReleaseFailed(f"upstream '{tool.server}' rejected the call: {exc.rpc_message}") from exc
        except MalformedResult as exc:
            # The upstream did answer, so it probably ran the call: say so, not just "failed".
            raise ReleaseFailed(
                f"upstream '{tool.server}' answered with a malformed result ({exc.problem}), which the "
                "broker did not pass on; the call may have run upstream"
            ) from exc
        except UpstreamError as exc:
            if may_have_run(exc):
                raise ReleaseOutcomeUnknown(exc.detail) from exc
            raise ReleaseFailed(f"{exc}; it was not sent") from exc
        return result
