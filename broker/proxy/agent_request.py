"""The agent's side of one request in flight, and whether the agent withdrew it.

Whether a request was withdrawn decides whether the approval it waits on is cancelled
(`broker.proxy.held_calls`). A withdrawal is ``notifications/cancelled`` (unless its reason only
says the client timed out, `broker.proxy.waiting.only_timed_out`), closing stdin, closing the
stream where the protocol makes that a cancellation, or ending the session. A lost connection, a
broker shutdown or a client that merely timed out withdraws nothing.

Ending the session (HTTP DELETE) withdraws only after a grace (`waiting.DEFAULT_END_GRACE`, 2 s),
because a client that times out sends its timed-out ``notifications/cancelled`` and then DELETE
on two connections, and the DELETE may arrive first. A cancellation heard within the grace
decides instead: a timed-out one leaves the approval pending, an explicit one withdraws at once.
A cancellation heard before the session ended also stands: the session end then changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import anyio

from broker.proxy.upstream.base import JsonObject

Notify = Callable[[str, JsonObject], Awaitable[None]]
"""Sends a notification on the stream of the request being served (a no-op when it has none)."""


class AgentRequest:
    """The agent's side of one request in flight."""

    __slots__ = ("_decided", "_grace_deadline", "_heard", "notify", "withdrawn")

    def __init__(self, notify: Notify) -> None:
        self.notify = notify
        self.withdrawn = False
        """Set by the endpoint before it cancels the request because the agent withdrew it, as
        opposed to a lost connection or a broker shutdown (see the module docstring)."""
        self._heard = False
        # Set while a session end's withdrawal may still be overruled by a late cancellation.
        self._decided: anyio.Event | None = None
        self._grace_deadline = math.inf

    def cancelled(self, *, timed_out: bool) -> None:
        """The agent sent ``notifications/cancelled`` for this request; `timed_out` when it only
        stopped waiting."""
        self._heard = True
        self.withdrawn = not timed_out
        if self._decided is not None:
            self._decided.set()

    def end_with_session(self, grace: float) -> None:
        """The agent ended its session under this request: a withdrawal, unless a cancellation for
        it is heard within `grace` seconds."""
        if self._heard or self.withdrawn:
            return
        self.withdrawn = True
        self._decided = anyio.Event()
        self._grace_deadline = anyio.current_time() + grace

    def stop_grace(self) -> None:
        """No cancellation can reach this request any more (the broker shuts down, or the ended
        session was forgotten): the session end withdraws it now."""
        if self._decided is not None:
            self._decided.set()

    async def withdrawal(self) -> bool:
        """Whether the agent withdrew this request, once that is known: after a session end, when a
        cancellation was heard or the grace ran out."""
        if self._decided is not None:
            with anyio.CancelScope(deadline=self._grace_deadline):
                await self._decided.wait()
        return self.withdrawn
