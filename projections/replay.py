"""Replay: re-apply stored events to the projection, idempotently, under the runner's lock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from events.event import Event
from projections.runner import apply_or_park, lock_id
from projections.tables import PROJECTION

CHUNK = 1000


@dataclass
class ReplayResult:
    """What a replay did (or, dry, would do)."""

    events: int = 0
    changes: Counter[str] = field(default_factory=Counter)
    parked: list[int] = field(default_factory=list)
    unparked: int = 0


@dataclass(frozen=True)
class Selection:
    """Which stored events to replay; every filter given must hold.

    `chat` matches events whose payload names the chat: `data.key.remoteJid` (messages),
    `data.remoteJid` (statuses) or a `remoteJid` in a `data` list (chats, contacts).
    `since`/`until` bound `received_at`, since inclusive, until exclusive.
    """

    first: int = 1
    last: int | None = None
    instance: str | None = None
    parked_only: bool = False
    types: tuple[str, ...] = ()
    chat: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def count(conn: Any, selection: Selection) -> int:
    """How many events the selection holds."""
    where, params = _where(selection)
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM events e WHERE {where}", params)
        return int(cur.fetchone()[0])


def replay(
    conn: Any,
    selection: Selection,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] = lambda done: None,
) -> ReplayResult:
    """Re-apply the selected events in position order, in chunks of one transaction each.

    Applying an event twice changes nothing, so replaying what is already projected is a
    no-op; events that now succeed leave the parked list, those that still fail stay.
    A dry run applies each chunk and rolls it back.
    """
    result = ReplayResult()
    after = selection.first - 1
    while True:
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '30s'")
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id(PROJECTION),))
            where, params = _where(selection)
            cur.execute(
                f"SELECT position, instance, type, payload FROM events e"
                f" WHERE {where} AND e.position > %s ORDER BY e.position LIMIT %s",
                (*params, after, CHUNK),
            )
            events = [Event(*row) for row in cur.fetchall()]
            if not events:
                return result
            batch = apply_or_park(cur, events)
            positions = [e.position for e in events]
            cur.execute(
                "DELETE FROM parked WHERE projection = %s AND position = ANY(%s)"
                " AND NOT position = ANY(%s)",
                (PROJECTION, positions, batch.parked or [0]),
            )
            result.unparked += cur.rowcount
            result.events += len(events)
            result.changes.update(item.kind for item in batch.feed)
            result.parked += batch.parked
            after = positions[-1]
            if dry_run:
                conn.rollback()
        progress(result.events)


def _where(selection: Selection) -> tuple[str, tuple[Any, ...]]:
    clauses: list[str] = ["e.position >= %s"]
    params: list[Any] = [selection.first]
    if selection.last is not None:
        clauses.append("e.position <= %s")
        params.append(selection.last)
    if selection.instance is not None:
        clauses.append("e.instance = %s")
        params.append(selection.instance)
    if selection.types:
        clauses.append("e.type = ANY(%s)")
        params.append(list(selection.types))
    if selection.chat is not None:
        clauses.append(
            "(e.payload #>> '{data,key,remoteJid}' = %s OR e.payload #>> '{data,remoteJid}' = %s"
            " OR (jsonb_typeof(e.payload->'data') = 'array'"
            " AND e.payload->'data'"
            " @> jsonb_build_array(jsonb_build_object('remoteJid', %s::text))))"
        )
        params += [selection.chat] * 3
    if selection.since is not None:
        clauses.append("e.received_at >= %s")
        params.append(selection.since)
    if selection.until is not None:
        clauses.append("e.received_at < %s")
        params.append(selection.until)
    if selection.parked_only:
        clauses.append("e.position IN (SELECT position FROM parked WHERE projection = %s)")
        params.append(PROJECTION)
    return " AND ".join(clauses), tuple(params)
