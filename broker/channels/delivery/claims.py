"""The claim a writer stores in place of a message's id while its post is under way.

``claim:<writer>:<until>`` is set by compare-and-set, so one replica posts and every other one
leaves the message to it; the claim of a writer that died lapses at <until> (Unix time).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

CLAIM_PREFIX = "claim:"


@dataclass(frozen=True, slots=True)
class Claim:
    writer: str
    until: float

    @classmethod
    def of(cls, stored: str | None) -> Claim | None:
        if stored is None or not stored.startswith(CLAIM_PREFIX):
            return None
        writer, _, until = stored[len(CLAIM_PREFIX) :].rpartition(":")
        try:
            return cls(writer, float(until))
        except ValueError:
            return cls(writer, 0.0)  # unreadable: as good as lapsed

    def lapsed(self, now: datetime) -> bool:
        return now.timestamp() >= self.until

    def __str__(self) -> str:
        return f"{CLAIM_PREFIX}{self.writer}:{self.until:.3f}"
