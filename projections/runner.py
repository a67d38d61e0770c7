"""The projection runner: read events after the checkpoint, apply them, write rows + feed +
checkpoint in one transaction (design.md invariants 4, 5 and 9).

Only one runner per projection writes at a time: each batch transaction takes the
projection's advisory lock first, so two workers never apply the same events concurrently,
and a crash or SIGKILL anywhere rolls the whole batch back.
"""

from __future__ import annotations

import zlib
from typing import Any

import psycopg2.errors

from events.event import Event
from events.store import Cursor, read_after
from projections.plan import plan_events
from projections.tables import LIVE, PROJECTION, Batch, Tables, park, reason
from projections.writer import render, write_rendered

# Events per transaction. Larger batches write each touched chat once for more events
# (catch-up ran ~1.6x faster at 5,000 than at 1,000); live traffic makes small batches anyway.
BATCH_SIZE = 5000


class Busy(Exception):
    """Another runner holds the projection's lock."""


def lock_id(projection: str) -> int:
    """The advisory lock key of a projection."""
    return zlib.crc32(f"zapline.projection.{projection}".encode())


def lock_listed(cur: Any, key: int, *, granted: bool) -> bool:
    """Whether a session of this database holds (`granted`) or waits for the advisory lock
    `key`, a `lock_id`."""
    cur.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND classid = 0 AND objid = %s::bigint::oid AND objsubid = 1 AND granted = %s)",
        (key, granted),
    )
    return bool(cur.fetchone()[0])


# What the database refuses to store however often it is asked (a value out of range, a
# constraint, a row too big for an index): a batch failing so would fail for ever.
REFUSED = (psycopg2.DataError, psycopg2.IntegrityError, psycopg2.errors.ProgramLimitExceeded)


def run_batch(
    conn: Any, *, limit: int = BATCH_SIZE, wait: bool = True, park_refused: bool = False
) -> Batch:
    """Project the next batch of events and commit; return what it did.

    With `wait=False` it raises Busy instead of queueing behind another runner. With
    `park_refused`, the events are applied as by `apply_or_park`.
    """
    with conn, conn.cursor() as cur:
        _lock(cur, wait)
        txid, position = cur.fetchone()
        read = read_after(cur, Cursor(txid, position), limit)
        if not read:
            return Batch(cursor=Cursor(txid, position))
        events = [event for _, event in read]
        batch = apply_or_park(cur, events) if park_refused else apply_events(cur, events)
        batch.events = len(read)
        batch.cursor = read[-1][0]
        cur.execute(
            "UPDATE checkpoints SET txid = %s, position = %s, updated_at = now()"
            " WHERE projection = %s",
            (batch.cursor.txid, batch.cursor.position, PROJECTION),
        )
        return batch


def apply_or_park(cur: Any, events: list[Event], *, tables: Tables = LIVE) -> Batch:
    """`apply_events`, except that an event whose rows the database refuses to store is
    parked: retried as it is, it would fail for ever and hold up every instance behind it.
    The events go in halves, and halves of those, until each refused one is found alone."""
    batch = Batch()
    _apply_or_split(cur, events, tables, batch)
    return batch


def _apply_or_split(cur: Any, events: list[Event], tables: Tables, batch: Batch) -> None:
    cur.execute("SAVEPOINT zapline_part")
    try:
        applied = apply_events(cur, events, tables=tables)
    except REFUSED as error:
        cur.execute("ROLLBACK TO SAVEPOINT zapline_part; RELEASE SAVEPOINT zapline_part")
        if len(events) == 1:
            park(cur, events[0], reason(error, park=True), batch, tables)
            return
        middle = len(events) // 2
        _apply_or_split(cur, events[:middle], tables, batch)
        _apply_or_split(cur, events[middle:], tables, batch)
        return
    cur.execute("RELEASE SAVEPOINT zapline_part")
    batch.feed += applied.feed
    batch.parked += applied.parked
    batch.new_media += applied.new_media
    batch.written.update(applied.written)


def apply_events(
    cur: Any, events: list[Event], *, park: bool = True, tables: Tables = LIVE
) -> Batch:
    """Apply events to the stored projection inside the caller's transaction.

    An event whose projection raises is parked with its error (or, with park=False, its
    error is re-raised) and the others go on. `tables` says where rows are read and written.
    """
    plan = plan_events(cur, events, park=park, tables=tables)
    return write_rendered(cur, render(plan, tables))


def _lock(cur: Any, wait: bool) -> None:
    """Take the projection's lock, then its checkpoint row (left for the caller to fetch)."""
    checkpoint = "SELECT txid, position FROM checkpoints WHERE projection = %s FOR UPDATE"
    if wait:
        # One round trip for all three: a live batch makes a dozen, each adds latency.
        cur.execute(
            "SET LOCAL lock_timeout = '10s'; SELECT pg_advisory_xact_lock(%s); " + checkpoint,
            (lock_id(PROJECTION), PROJECTION),
        )
        return
    cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock_id(PROJECTION),))
    if not cur.fetchone()[0]:
        raise Busy(PROJECTION)
    cur.execute(checkpoint, (PROJECTION,))
