"""Deadlines for slow or incomplete requests, and a cap on connections per client address.

Left to itself, uvicorn's HTTP protocol (httptools, the one `broker serve` runs) closes a
kept-alive connection that stays idle `timeout_keep_alive` seconds (5 s) after a response, and
otherwise waits for ever: for a first byte that never comes, for a request head or body that
never ends. Any address may open as many connections as the process has file descriptors.
`limited_protocol` returns the protocol class `broker serve` gives uvicorn instead, which adds
(settings: the `limits:` section, `LimitSettings`):

- ``header_timeout`` (10 s): a request head must be complete this long after the connection
  opened, or, on a kept-alive connection, after the first byte of the next request.
- ``body_timeout`` (30 s): its body must be complete this long after the head. A body waiting
  behind an earlier response on the same connection (pipelining) cannot be read before that
  response ends, so its deadline starts when it can.
- ``max_connections_per_address`` (256): connections open at once from one client address.

Only requests have deadlines, never responses. A POST /mcp whose answer is held for minutes
while a human decides, the GET /mcp notification stream and the inbox's /events stream have
sent their whole request, and from then on no timer runs on their connection. The cap is high
for the same reason: an agent holds one connection per call it waits on (httpx pools up to
100), plus its notification stream, and several agents may share one egress address.

A request past its deadline is answered ``408 Request Timeout`` with ``Connection: close``
when nothing of a response to it has been sent; otherwise (a response is under way, or a
pipelined request waits behind one) the connection is closed without a word, since whatever
were written would be read as part of that response. Either way the connection closes, and an
application still reading the body receives ``http.disconnect``.

An extra connection from a capped address is answered ``503 Service Unavailable`` at once,
with ``Connection: close``, and never reaches the application. Its sending side is then shut
and what the client still sends is read and dropped, because closing a socket with unread data
resets it and the client could lose the 503; it closes when the client does, at the latest
`REFUSAL_LINGER` seconds later. It is not counted.

Addresses in ``exempt`` (`broker serve` passes ``web.trusted_proxies``) are not capped: a
reverse proxy carries many clients over its connections, and capping it would let one noisy
client lock all the others out; per-client limits belong on the proxy, which alone sees the
clients. The deadlines still apply to it. Unix-socket peers have no address and are not capped.

Cost on the hot path: a request that arrives in one read, as an agent's call does, arms no
timer; it costs a few attribute writes. A new connection arms one timer (for its first head),
and a request split across reads arms one per phase it waits in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from broker.config.settings import LimitSettings

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

REFUSAL_LINGER = 1.0
"""Seconds a refused connection stays open at most, for the client to read its 503."""


# Where a connection is, as plain ints: these are compared several times per request.
_HEAD = 0  # waiting for the rest of a request head: header_timeout
_BODY = 1  # head complete, body not: body_timeout
_QUEUED = 2  # body not complete, but it waits behind an earlier response: no deadline
_IDLE = 3  # between requests: uvicorn's timeout_keep_alive applies once the response ends


class AddressCounts:
    """Connections open per client address, shared by all connections of one listener."""

    def __init__(self, limit: int, exempt: Sequence[Network] = ()) -> None:
        self.limit = limit
        self._exempt = tuple(exempt)
        self._open: dict[str, int] = {}
        self._refusing: set[str] = set()

    def admit(self, address: str) -> bool:
        """Counts a new connection from `address`; False (not counted) when it is over the cap."""
        if self._exempt and self._is_exempt(address):
            return True
        count = self._open.get(address, 0)
        if count >= self.limit:
            if address not in self._refusing:
                # Once per episode, not once per refused connection: a flood must not flood the log.
                self._refusing.add(address)
                logger.warning(
                    "refusing connections from %s: %d already open (limits.max_connections_per_address)",
                    address,
                    count,
                )
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)
        if count < self.limit:
            self._refusing.discard(address)

    def _is_exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._exempt)


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines and the cap; see the module docstring."""

    limits: ClassVar[LimitSettings] = LimitSettings()
    counts: ClassVar[AddressCounts] = AddressCounts(LimitSettings().max_connections_per_address)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The broker serves no WebSocket; an upgrade would hand the transport to another protocol
        # and this one would never see the connection end (nor release its count).
        self.ws_protocol_class = None
        self._phase = _HEAD
        self._epoch = 0  # bumped on every phase change: a timer armed in an earlier phase is stale
        self._timer: asyncio.TimerHandle | None = None
        self._timer_epoch = -1
        self._address: str | None = None
        self._refused = False

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else None
        if address is not None:
            if not self.counts.admit(address):
                self._refuse(address)
                return
            self._address = address
        self._settle()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._cancel_timer()
        if self._address is not None:
            self.counts.release(self._address)
            self._address = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._phase == _IDLE:
            self._phase = _HEAD
            self._epoch += 1
        super().data_received(data)
        # The usual request arrives whole: idle again and no timer, so nothing to do.
        if self._phase != _IDLE or self._timer is not None:
            self._settle()

    # Parser callbacks (called from within data_received)

    def on_message_begin(self) -> None:
        if self._phase == _IDLE:  # a pipelined request in the same read as the previous one
            self._phase = _HEAD
            self._epoch += 1
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # uvicorn queues the request when an earlier response on this connection is still running.
        self._phase = _QUEUED if self.pipeline else _BODY
        self._epoch += 1

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        self._epoch += 1
        super().on_message_complete()

    # Called from the application's task when a response ends

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._phase == _QUEUED and not self.pipeline:
            # uvicorn has just started the queued request and reads again: its body may now arrive.
            self._phase = _BODY
            self._epoch += 1
            self._settle()

    # Deadlines

    def _settle(self) -> None:
        """Makes the timer match the phase: none, the one already running, or a fresh one."""
        if self._phase == _IDLE or self._phase == _QUEUED:
            self._cancel_timer()
        elif self._timer_epoch != self._epoch:
            self._cancel_timer()
            timeout = self.limits.header_timeout if self._phase == _HEAD else self.limits.body_timeout
            self._timer = self.loop.call_later(timeout, self._expired, self._epoch)
            self._timer_epoch = self._epoch

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_epoch = -1

    def _expired(self, epoch: int) -> None:
        if epoch != self._epoch or self.transport.is_closing():
            return  # stale: never expected, as every phase change cancels or replaces the timer
        self._timer = None
        self._timer_epoch = -1
        cycle = self.cycle
        if self._phase == _HEAD:
            what, key, timeout = "head", "header_timeout", self.limits.header_timeout
            answer = cycle is None or cycle.response_complete
        else:
            what, key, timeout = "body", "body_timeout", self.limits.body_timeout
            answer = cycle is not None and not cycle.response_started
            if answer and cycle is not None:
                # The application stops waiting for the body, and whatever it answers is dropped.
                cycle.disconnected = True
                cycle.message_event.set()
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        logger.info(
            "closing the connection from %s: request %s not complete within %g s", peer, what, timeout
        )
        if answer:
            self._write_response(408, f"Request {what} not complete within {timeout:g} s (limits.{key})\n")
        self.transport.close()

    # Refusal

    def _refuse(self, address: str) -> None:
        self._refused = True
        self._write_response(
            503,
            f"Too many connections from {address}: at most {self.counts.limit} at a time "
            "(limits.max_connections_per_address); retry when some have closed\n",
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._timer = self.loop.call_later(REFUSAL_LINGER, self.transport.close)
        else:  # TLS cannot half-close
            self.transport.close()

    def _write_response(self, status: int, message: str) -> None:
        body = message.encode()
        head = [
            f"HTTP/1.1 {status} {'Request Timeout' if status == 408 else 'Service Unavailable'}\r\n".encode()
        ]
        head.extend(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers)
        head.append(
            b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.write(b"".join(head) + body)


def limited_protocol(limits: LimitSettings, *, exempt: Sequence[Network] = ()) -> type[LimitedHttpProtocol]:
    """The HTTP protocol class for one listener (uvicorn's ``Config(http=...)``), with its own counts."""

    class ListenerProtocol(LimitedHttpProtocol):
        pass

    ListenerProtocol.limits = limits
    ListenerProtocol.counts = AddressCounts(limits.max_connections_per_address, exempt)
    return ListenerProtocol
