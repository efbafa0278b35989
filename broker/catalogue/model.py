"""The catalogue's vocabulary: a tool as the broker sees it, and what we think that tool does."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Category(enum.StrEnum):
    """What kind of effect a tool has, from harmless to the kinds that lose money or control."""

    READ_ONLY = "read_only"
    WRITE = "write"
    DESTRUCTIVE = "destructive"
    FINANCIAL = "financial"
    EXTERNAL_COMMUNICATION = "external_communication"
    CODE_EXECUTION = "code_execution"
    CREDENTIALS = "credentials"

    @property
    def precedence(self) -> int:
        """Breaks ties between equally risky findings: the category a reviewer most needs to see wins."""
        return _CATEGORY_PRECEDENCE[self]


_CATEGORY_PRECEDENCE: dict[Category, int] = {
    Category.READ_ONLY: 0,
    Category.WRITE: 1,
    Category.EXTERNAL_COMMUNICATION: 2,
    Category.DESTRUCTIVE: 3,
    Category.CODE_EXECUTION: 4,
    Category.CREDENTIALS: 5,
    Category.FINANCIAL: 6,
}


class Risk(enum.Enum):
    """How bad a careless or malicious call could be. Ordered: ``Risk.LOW < Risk.CRITICAL``."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RISK_RANK[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Risk):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Risk):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Risk):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Risk):
            return NotImplemented
        return self.rank >= other.rank


_RISK_RANK: dict[Risk, int] = {Risk.LOW: 0, Risk.MEDIUM: 1, Risk.HIGH: 2, Risk.CRITICAL: 3}


@dataclass(frozen=True, slots=True)
class ToolClassification:
    """Our reading of one upstream tool. `reasons` start with the finding that decided it."""

    server: str
    name: str
    category: Category
    risk: Risk
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "name": self.name,
            "category": self.category.value,
            "risk": self.risk.value,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True, slots=True)
class CatalogueTool:
    """One tool offered by one upstream server.

    `exposed_name` is the name agents see through the gateway (``server__tool`` when several
    servers are aggregated, the bare name otherwise); `definition` is the raw ``tools/list``
    entry, kept out of equality and hashing because it is a mutable dict.
    """

    server: str
    name: str
    exposed_name: str
    definition: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"server": self.server, "name": self.name, "exposed_name": self.exposed_name}
