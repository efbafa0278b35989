"""``tool_events``: how long the events of pinned tool definitions are kept.

```yaml
tool_events: {retention_days: 90}   # the default; 0 or null keeps every event forever
```

Older events are pruned by the approval sweep (broker.catalogue.retention), except those that
explain a pin's state: its last acceptance, the changes since (pending ones included) and its
last sighting, however old.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field

from broker.catalogue.retention import DEFAULT_RETENTION_DAYS

# A hundred years: anything longer is "forever", which 0 or null already says.
MAX_RETENTION_DAYS = 36_500


class ToolEventsEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Strict: YAML's `yes` or "90" is a mistake to point at, not a number to guess.
    retention_days: int | None = Field(
        default=DEFAULT_RETENTION_DAYS, ge=0, le=MAX_RETENTION_DAYS, strict=True
    )


@dataclass(frozen=True)
class ToolEventSettings:
    retention: timedelta | None = timedelta(days=DEFAULT_RETENTION_DAYS)
    """Events older than this are pruned (never those that explain a pin); None keeps them all."""


def tool_event_settings(entry: ToolEventsEntry) -> ToolEventSettings:
    days = entry.retention_days
    return ToolEventSettings(retention=timedelta(days=days) if days else None)
