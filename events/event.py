"""What the event store hands to readers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Event:
    """One stored webhook: its log position, instance, type and (lean) payload."""

    position: int
    instance: str
    type: str
    payload: dict[str, Any]
    received_at: datetime
