"""The policy file in force: loaded at start (fail closed), reloaded on change and on SIGHUP.

A rejected reload keeps the last good policy and is remembered (`rejection`: when, why, which
revision stays in force) until a later reload succeeds or the file is back to the policy in force,
so `/readyz` and the web inbox can show it, not only the log.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio

from broker.approvals.clock import Clock, utc_now
from broker.policy import Policy, PolicyError, load_policy
from broker.policy.holder import PolicyHolder

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    changed: bool
    revision: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ReloadRejection:
    at: datetime
    message: str
    """What was wrong with the file (PolicyError text with lines, or why it could not be read)."""
    kept_revision: str

    def to_json(self) -> dict[str, str]:
        return {"at": self.at.isoformat(), "message": self.message, "kept_revision": self.kept_revision}


def read_policy(path: Path) -> Policy:
    """Loads a policy file; raises PolicyError (with line numbers, also for bytes that are not UTF-8) or OSError."""
    return load_policy(path.read_bytes(), source=str(path))


class PolicyFile:
    def __init__(
        self,
        path: Path,
        *,
        on_change: Callable[[Policy, Policy], None] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.path = path
        self._on_change = on_change
        self._clock = clock
        self.rejection: ReloadRejection | None = None
        """The last reload that was refused, while the file still differs from the policy in force."""
        self._fingerprint: tuple[int, int, int] | None = None
        self._digest = ""
        self.holder = PolicyHolder(self._load_initial())

    def _load_initial(self) -> Policy:
        data = self.path.read_bytes()
        self._fingerprint = self._stat()
        self._digest = hashlib.sha256(data).hexdigest()
        return load_policy(data, source=str(self.path))

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def reload(self) -> ReloadOutcome:
        """Re-reads the file; on any error the last good policy stays in force. Never raises:
        it runs from the watch task and the SIGHUP handler, where an exception would stop reloads."""
        try:
            outcome = self._reload(self.holder.current)
        except Exception as exc:
            in_force = self.holder.current.revision
            logger.exception("policy reload failed unexpectedly; revision %s stays in force", in_force)
            outcome = ReloadOutcome(False, in_force, f"reload failed: {exc!r}")
        # Without an error the file holds the policy in force (reloaded, or unchanged from it)
        self.rejection = (
            ReloadRejection(self._clock(), outcome.error, outcome.revision)
            if outcome.error is not None
            else None
        )
        return outcome

    def _reload(self, current: Policy) -> ReloadOutcome:
        self._fingerprint = self._stat()
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            message = f"cannot read {self.path}: {exc.strerror or exc}; keeping revision {current.revision}"
            logger.error("policy reload failed: %s", message)
            return ReloadOutcome(False, current.revision, message)
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return ReloadOutcome(False, current.revision)
        try:
            policy = load_policy(data, source=str(self.path))
        except PolicyError as exc:
            logger.error("policy reload rejected, keeping revision %s:\n%s", current.revision, exc)
            return ReloadOutcome(False, current.revision, str(exc))
        self._digest = digest
        self.holder.current = policy
        logger.info("policy reloaded: revision %s -> %s (%s)", current.revision, policy.revision, self.path)
        if self._on_change is not None:
            self._on_change(current, policy)
        return ReloadOutcome(True, policy.revision)

    async def watch(
        self, interval: float, *, sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    ) -> None:
        """Polls the file's identity: portable, and cheap enough at one stat per interval."""
        while True:
            await sleep(interval)
            try:
                if self._stat() != self._fingerprint:
                    self.reload()
            except Exception:
                logger.exception(
                    "policy watch: checking %s failed; trying again in %g s", self.path, interval
                )
