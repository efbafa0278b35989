"""Handshake-era (2025-11-25 and older) MCP sessions on the HTTP endpoint.

The agent ending its session (DELETE) withdraws the requests it has in flight, after a grace in
which a cancellation the DELETE overtook still decides (see `broker.proxy.agent_request`); the
broker ending one (idle, shutdown) withdraws nothing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from broker.proxy.agent import AgentContext
from broker.proxy.agent_request import AgentRequest
from broker.proxy.jsonrpc import RequestId
from broker.proxy.waiting import DEFAULT_END_GRACE


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
        request.cancelled(timed_out=timed_out)
        scope.cancel()
        return True

    def end(self, grace: float) -> dict[RequestId, AgentRequest]:
        """The agent ended the session: ends every request in flight, each withdrawn unless a
        cancellation for it comes within `grace` seconds. Returns those requests."""
        ended = {}
        for request_id, (scope, request) in self.in_flight.items():
            request.end_with_session(grace)
            scope.cancel()
            ended[request_id] = request
        self.in_flight.clear()
        return ended

    def close(self) -> None:
        """The broker ended the session (idle, or shutting down): withdraws nothing."""
        for scope, _ in self.in_flight.values():
            scope.cancel()
        self.in_flight.clear()


@dataclass(slots=True)
class _EndedSession:
    """What a late ``notifications/cancelled`` for an ended session still reaches."""

    agent: str
    requests: dict[RequestId, AgentRequest]
    until: float


class SessionRegistry:
    """Sessions are bound to the agent that opened them: a session id is not a credential.

    An ended session's requests in flight are remembered for `end_grace` seconds, so that a
    cancellation the session's DELETE overtook still reaches them (`broker.proxy.agent_request`);
    anything else sent to an ended session finds no session."""

    def __init__(
        self,
        *,
        idle_timeout: float = 30 * 60,
        max_sessions: int = 10_000,
        end_grace: float = DEFAULT_END_GRACE,
        clock: Callable[[], float] = time.monotonic,
        new_id: Callable[[], str] = lambda: os.urandom(16).hex(),
    ) -> None:
        self._sessions: dict[str, AgentSession] = {}
        self._idle_timeout = idle_timeout
        self._max_sessions = max_sessions
        self._end_grace = end_grace
        # Ordered by `until`: the grace is the same for all and the clock never goes back.
        self._ended: dict[str, _EndedSession] = {}
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

    def close(self, session_id: str) -> None:
        """The broker ends the session; nothing it waits on is withdrawn."""
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.close()

    def end(self, session_id: str) -> None:
        """The agent ends the session (DELETE): see `AgentSession.end`."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        requests = session.end(self._end_grace)
        self._forget_expired()
        if requests and self._end_grace > 0:
            until = self._clock() + self._end_grace
            self._ended[session_id] = _EndedSession(session.context.agent, requests, until)

    def cancel_after_end(
        self, session_id: str, agent: str, request_id: RequestId, *, timed_out: bool
    ) -> bool:
        """A ``notifications/cancelled`` that reached a session its DELETE had ended. True when the
        session ended within the grace, so the cancellation still counts (for a request it knows)."""
        self._forget_expired()
        ended = self._ended.get(session_id)
        if ended is None or ended.agent != agent:
            return False
        request = ended.requests.pop(request_id, None)
        if request is not None:
            request.cancelled(timed_out=timed_out)
        if not ended.requests:
            del self._ended[session_id]
        return True

    def _forget_expired(self) -> None:
        now = self._clock()
        while self._ended:
            session_id, ended = next(iter(self._ended.items()))
            if ended.until > now:
                return
            del self._ended[session_id]
            # No late cancellation can reach these any more: do not let them wait on another clock.
            for request in ended.requests.values():
                request.stop_grace()

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
        # No late cancellation can arrive during shutdown: ended sessions withdraw now.
        for ended in self._ended.values():
            for request in ended.requests.values():
                request.stop_grace()
        self._ended.clear()

    def __len__(self) -> int:
        return len(self._sessions)
