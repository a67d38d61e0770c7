"""Where a batch's rows go (the live tables or a rebuild's shadow copies), what it did there,
and parking the events it cannot apply."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from events.event import Event
from events.store import Cursor
from projections.feed import FeedItem

log = logging.getLogger("zapline.runner")

PROJECTION = "messages"


@dataclass
class Batch:
    """What one committed batch did."""

    events: int = 0
    cursor: Cursor = field(default_factory=Cursor)
    feed: list[FeedItem] = field(default_factory=list)
    parked: list[int] = field(default_factory=list)
    new_media: list[int] = field(default_factory=list)
    # The public messages written, by key (media id merged in).
    written: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Tables:
    """Where a projection's rows go: the live tables, or a rebuild's shadow copies.

    Names are constants of this package, never input, so they are put into SQL as text.
    `feed` says whether changes reach the change feed (a shadow's never do); `parked_as`
    is the projection name its unappliable events are parked under.
    """

    messages: str = "messages"
    holds: str = "message_holds"
    chats: str = "chats"
    parked_as: str = PROJECTION
    feed: bool = True


LIVE = Tables()


def reason(error: Exception, park: bool) -> str:
    """The parked reason for an event's error, or the error itself when not parking."""
    if not park:
        raise error
    return f"{type(error).__name__}: {error}"[:2000]


def park(cur: Any, event: Event, reason: str, batch: Batch, tables: Tables) -> None:
    """Set an event aside with its reason, for `status` to show and `replay` to retry."""
    log.warning("parked event", extra={"fields": {"position": event.position, "error": reason}})
    cur.execute(
        "INSERT INTO parked (projection, position, error) VALUES (%s, %s, %s)"
        " ON CONFLICT (projection, position) DO UPDATE SET error = EXCLUDED.error,"
        " attempts = parked.attempts + 1, parked_at = now()",
        (tables.parked_as, event.position, reason),
    )
    batch.parked.append(event.position)
