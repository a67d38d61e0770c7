"""What the event store hands to readers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    """One stored webhook, as projections read it: log position, instance, type, (lean) payload."""

    position: int
    instance: str
    type: str
    payload: dict[str, Any]
