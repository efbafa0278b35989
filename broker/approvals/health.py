"""Whether the approval store may be relied on right now: the switch the proxy reads before it
forwards a call, and the answer `/readyz` gives.

The guarantee (fail closed, without a lag):

* Once any part of this broker has seen the store fail, no agent's call is forwarded until a
  probe started after that failure has succeeded. The proxy reads `up` with no await between
  that read and starting to forward; an approved call is released only after the store has
  recorded the release, so it needs the store anyway. "Seen fail" means: a store operation
  raised StoreUnavailable (the store reports every one itself, so no caller can forget; a lock
  timeout counts too, and then costs the next call one probe), a probe failed, or (PostgreSQL)
  the replica notification connection dropped. A probe overlapping a newer failure does not count.
* A failure is seen at the latest at the next store operation, the next probe (every
  `up_interval` while up, by default the sweep interval) or, on PostgreSQL, the moment the
  server closes the notification connection (a stopped server or terminated backends close
  it at once). Between the database dying and one of these, the broker cannot know, and
  calls are still forwarded; that window is what this object cannot close.
* Recovery needs no sweep: a call arriving while the store is down starts a probe (one round
  trip, shared by every caller arriving while it runs) and goes through if it succeeds within
  `probe_timeout`; otherwise it is refused. While down, a background prober also retries
  every `down_interval`.

While the store is healthy the hot path is one attribute read (`up`); it does no I/O.

Exception tree: none of its own. The probe's StoreUnavailable (or anything else it raises)
marks the store down; nothing is raised to callers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup, TaskStatus

logger = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[object]]
"""One round trip proving the store answers; raises (StoreUnavailable) when it does not."""


class StoreHealth:
    def __init__(
        self,
        probe: Probe,
        *,
        up_interval: float = 1.0,
        down_interval: float = 0.1,
        probe_timeout: float = 2.0,
    ) -> None:
        for name, value in (
            ("up_interval", up_interval),
            ("down_interval", down_interval),
            ("probe_timeout", probe_timeout),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self._probe = probe
        self._up_interval = up_interval
        self._down_interval = down_interval
        self._probe_timeout = probe_timeout
        self.up = True
        """Read on the hot path: False from the first failure seen until a later probe succeeds."""
        self.reason = ""
        """Why the store was last marked down (empty while it never was)."""
        self.failures = 0
        """Failures seen so far; a probe counts only if none was seen while it ran."""
        self._probing: anyio.Event | None = None
        self._changed = anyio.Event()
        self._tasks: TaskGroup | None = None

    def failed(self, reason: str) -> None:
        """Something saw the store fail: refuse calls from now on. Safe to call from any task and
        from callbacks (no await)."""
        self.failures += 1
        self.reason = reason
        if self.up:
            logger.error("approval store unreachable, forwarding no calls until it is back: %s", reason)
            self._set(False)

    async def recheck(self) -> bool:
        """For a call arriving while the store is down: True once a probe started at or after this
        call succeeded; False when it failed or took longer than `probe_timeout`."""
        if self.up:
            return True
        with anyio.move_on_after(self._probe_timeout):
            await self._probed()
        return self.up

    async def probe(self) -> bool:
        """Probe now (or join the probe under way) and return the state it left."""
        await self._probed()
        return self.up

    async def wait(self, *, up: bool) -> None:
        """Returns once the store is (or is no longer) considered up."""
        while self.up is not up:
            await self._changed.wait()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The background prober: every `up_interval` while up, every `down_interval` while down.
        Also lets `recheck` probe in the background, so a caller's timeout never strands a probe."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            task_status.started()
            try:
                while True:
                    await anyio.sleep(self._up_interval if self.up else self._down_interval)
                    await self.probe()
            finally:
                self._tasks = None

    async def _probed(self) -> None:
        done = self._probing
        if done is None:
            done = self._probing = anyio.Event()
            if self._tasks is None:
                # No prober running (tests, tools): the first caller's own task carries the probe.
                await self._run_probe(done)
                return
            self._tasks.start_soon(self._run_probe, done)
        await done.wait()

    async def _run_probe(self, done: anyio.Event) -> None:
        try:
            # A success counts only if no failure was seen while it ran; one such race is
            # retried at once, not left to the next interval.
            for _ in range(2):
                seen = self.failures
                try:
                    await self._probe()
                except Exception as exc:
                    self.failed(f"probe failed: {exc}")
                    return
                if self.failures == seen:
                    if not self.up:
                        logger.warning("approval store reachable again; forwarding resumes")
                        self._set(True)
                    return
        finally:
            self._probing = None
            done.set()

    def _set(self, up: bool) -> None:
        self.up = up
        self._changed.set()
        self._changed = anyio.Event()
