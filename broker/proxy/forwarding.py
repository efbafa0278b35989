"""Forwarding an allowed call upstream and turning what comes back into the agent's answer.

Every upstream answer to ``tools/call``, for an allowed call or a released held one, leaves
through `Forwarder.call`, which checks it against the CallToolResult shape of the version that
upstream negotiated (`broker.proxy.result_shape`). A malformed one is never passed on: it raises
`MalformedResult`, which an allowed call (`Forwarder.forward`) turns into an error result saying
the call may have run upstream, and a release into a ``failed`` approval.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from broker.observability.calls import UpstreamLatency
from broker.proxy.agent import AgentContext
from broker.proxy.agent_request import Notify
from broker.proxy.call_results import upstream_failure_result
from broker.proxy.gateway_ports import Upstreams
from broker.proxy.jsonrpc import RpcError
from broker.proxy.result_shape import tool_result_problem
from broker.proxy.upstream.base import (
    JsonObject,
    MalformedResult,
    NoCredential,
    UpstreamLost,
    UpstreamRpcError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from broker.proxy.upstream.credentials.caller import UpstreamCaller
from broker.proxy.upstream.pool import UpstreamTool

logger = logging.getLogger(__name__)


class Forwarder:
    def __init__(self, upstreams: Upstreams, *, latency: UpstreamLatency, call_timeout: float | None) -> None:
        self._upstreams = upstreams
        self._latency = latency
        self._call_timeout = call_timeout
        # Upstream connections are shared by all agents, so agents' progress tokens are
        # replaced by broker-unique ones on the way up and restored on the way down.
        self._token_prefix = f"broker-{os.urandom(3).hex()}-"
        self._token_counter = itertools.count(1)

    async def forward(
        self,
        ctx: AgentContext,
        tool: UpstreamTool,
        arguments: dict[str, Any],
        params: JsonObject,
        notify: Notify,
        settled: AbstractAsyncContextManager[None],
    ) -> JsonObject:
        """The agent's answer to an allowed call; `settled` commits or releases its spend."""
        meta = params.get("_meta")
        upstream_meta: JsonObject | None = None
        relay = None
        agent_token = meta.get("progressToken") if isinstance(meta, dict) else None
        if agent_token is not None:
            upstream_token = f"{self._token_prefix}{next(self._token_counter)}"
            upstream_meta = {"progressToken": upstream_token}

            async def relay(message: JsonObject) -> None:
                if message.get("method") == "notifications/progress":
                    progress = dict(message.get("params") or {})
                    progress["progressToken"] = agent_token
                    await notify("notifications/progress", progress)

        try:
            async with settled:
                caller = UpstreamCaller(ctx.agent, ctx.claims or {}, ctx.subject_token)
                result = await self.call(
                    tool, arguments, meta=upstream_meta, on_notification=relay, caller=caller
                )
        except UpstreamLost as exc:
            return upstream_failure_result(
                f"The connection to upstream server '{tool.server}' broke after the call to "
                f"'{tool.exposed_name}' was sent and before it answered ({exc.detail}); it may have run. "
                "It was not retried: check on the upstream before calling it again."
            )
        except NoCredential as exc:
            return upstream_failure_result(
                f"The call to '{tool.exposed_name}' was not sent: the broker could not make the credential "
                f"upstream server '{tool.server}' needs for it ({exc.detail}). Retrying will not help until "
                "that is fixed; tell whoever runs the broker if it persists."
            )
        except UpstreamUnavailable as exc:
            return upstream_failure_result(
                f"The upstream server '{tool.server}' for tool '{tool.exposed_name}' is unavailable "
                f"({exc.detail}). The call was not sent; the broker is reconnecting, retry shortly."
            )
        except UpstreamTimeout as exc:
            return upstream_failure_result(
                f"The upstream server '{tool.server}' did not answer the call to '{tool.exposed_name}' in time "
                f"({exc.detail}); it may have run. It was not retried: check on the upstream before calling "
                "it again."
            )
        except UpstreamRpcError as exc:
            raise RpcError(exc.code, exc.rpc_message, exc.data) from exc
        except MalformedResult as exc:
            return upstream_failure_result(
                f"The upstream server '{tool.server}' answered the call to '{tool.exposed_name}' with a "
                f"malformed result ({exc.problem}); the broker did not pass it on. The call may have run "
                "upstream, so check before retrying anything that must not happen twice."
            )
        return result

    async def call(
        self,
        tool: UpstreamTool,
        arguments: dict[str, Any],
        *,
        meta: JsonObject | None = None,
        on_notification: Callable[[JsonObject], Awaitable[None]] | None = None,
        caller: UpstreamCaller | None = None,
    ) -> JsonObject:
        """The one door to the upstreams, also used by the approval service to release a held call.

        Returns only well-formed CallToolResults; raises `MalformedResult` for any other answer."""
        # Read before the call: a reconnect while it runs may negotiate another version.
        version = self._upstreams.protocol_version(tool.server)
        started = time.perf_counter()
        try:
            result = await self._upstreams.call_tool(
                tool,
                arguments,
                meta=meta,
                on_notification=on_notification,
                timeout=self._call_timeout,
                caller=caller,
            )
        finally:
            self._latency.observe(tool.server, time.perf_counter() - started)
        problem = tool_result_problem(result, version)
        if problem is not None:
            logger.warning(
                "upstream '%s' answered tools/call '%s' with a malformed result (protocol %s): %s",
                tool.server,
                tool.name,
                version or "unknown",
                problem,
            )
            raise MalformedResult(tool.server, problem)
        return result
