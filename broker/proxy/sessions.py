"""Handshake-era (2025-11-25 and older) MCP sessions on the HTTP endpoint."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from broker.proxy.agent import AgentContext, AgentRequest
from broker.proxy.jsonrpc import RequestId


@dataclass(eq=False, slots=True)
class AgentSession:
    id: str
    context: AgentContext
    protocol_version: str
    last_seen: float
    initialized: bool = False
    listening: bool = False
    in_flight: dict[RequestId, tuple[anyio.CancelScope, AgentRequest]] = field(default_factory=dict)

    def withdraw(self, request_id: RequestId, *, timed_out: bool = False) -> bool:
        """The agent cancelled one of its requests (``notifications/cancelled``); `timed_out` when it
        only stopped waiting (see `broker.proxy.waiting.only_timed_out`), which withdraws nothing."""
        entry = self.in_flight.get(request_id)
        if entry is None:
            return False
        scope, request = entry
        request.withdrawn = not timed_out
        scope.cancel()
        return True

    def close(self, *, withdraw: bool) -> None:
        """Ends every request in flight; `withdraw` when the agent itself ended the session."""
        for scope, request in self.in_flight.values():
            request.withdrawn = request.withdrawn or withdraw
            scope.cancel()
        self.in_flight.clear()


class SessionRegistry:
    """Sessions are bound to the agent that opened them: a session id is not a credential."""

    def __init__(
        self,
        *,
        idle_timeout: float = 30 * 60,
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        new_id: Callable[[], str] = lambda: os.urandom(16).hex(),
    ) -> None:
        self._sessions: dict[str, AgentSession] = {}
        self._idle_timeout = idle_timeout
        self._max_sessions = max_sessions
        self._clock = clock
        self._new_id = new_id

    def open(self, agent: str, protocol_version: str) -> AgentSession | None:
        """A new session, or None when the broker is at its session limit even after reaping idle ones."""
        if len(self._sessions) >= self._max_sessions:
            self.reap_idle()
            if len(self._sessions) >= self._max_sessions:
                return None
        session_id = self._new_id()
        session = AgentSession(
            id=session_id,
            context=AgentContext(agent=agent, session=session_id),
            protocol_version=protocol_version,
            last_seen=self._clock(),
        )
        self._sessions[session_id] = session
        return session

    def get(self, session_id: str, agent: str) -> AgentSession | None:
        session = self._sessions.get(session_id)
        if session is None or session.context.agent != agent:
            return None
        session.last_seen = self._clock()
        return session

    def close(self, session_id: str, *, withdraw: bool = False) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.close(withdraw=withdraw)

    def reap_idle(self) -> int:
        horizon = self._clock() - self._idle_timeout
        idle = [
            sid
            for sid, session in self._sessions.items()
            if session.last_seen < horizon and not session.in_flight and not session.listening
        ]
        for sid in idle:
            self.close(sid)
        return len(idle)

    def close_all(self) -> None:
        for sid in list(self._sessions):
            self.close(sid)

    def __len__(self) -> int:
        return len(self._sessions)
