"""Zero-downtime rebuild: build a projection into shadow tables, catch up, swap in one step.

1. Build. Shadow copies of `messages`, `message_holds` and `chats` are filled from position 0
   with the projection's own `apply_or_park`, in batches that each commit the shadow rows
   with the shadow's checkpoint (the `rebuilds` row), so an interrupted rebuild resumes.
   The shadow never reads past the live checkpoint, and it writes no feed: the live
   projection keeps serving reads and projecting new events meanwhile.
2. Compare, before taking the projection's lock: note the keys whose rows differ between
   shadow and live, and the oldest transaction that comparison's snapshot did not see.
3. Swap, in one transaction under the projection's advisory lock (the live runner pauses
   there): apply the last events up to the live checkpoint, compare again only the noted
   keys and those of rows written since (a row's xmin says when), report the summary (a dry
   run stops here, keeping the shadow for the real run), append one feed change per
   differing message or chat with cursors after the live head, then drop the live tables and
   rename the shadows in their place. Readers wait only for the renames (a catalog change)
   and then see the whole new projection; the checkpoint does not move. The live runner
   waits for a scan of the tables, not for a comparison of them (0.9 s instead of 6 s for
   800,000 messages on a 2-core machine).

The `media` table is shared, not rebuilt from scratch: its ids are public (`GET
/api/media/{id}`) and its storage state comes from uploads, not from events. The shadow
upserts the rows its messages need (the live projection's, or new ones where they are
missing), and takes each message's media status from them at swap time.
Rows the rebuild removes are counted but not pushed: the feed has no removal change.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extras

from events.errors import ZaplineError
from events.store import Cursor, read_after
from projections.catchup import collector_paused
from projections.feed import FeedItem
from projections.runner import apply_or_park, lock_id, lock_listed
from projections.shadow import (
    PAIRS,
    SHADOW,
    Summary,
    drop_shadow,
    emit_differences,
    note_differences,
    note_written_since,
    refresh_media_status,
    summarise,
)
from projections.tables import PROJECTION

log = logging.getLogger("zapline.rebuild")

# Events per shadow transaction. Each writes every chat its events touch once: bench/rebuild.py
# (1,000,000 events over 8,000 chats, under load) took 57.4 s at 20,000 against 74.9 s at
# 10,000 (bench/RESULTS.md). By hand, without load: no faster at 30,000-40,000, and peak RSS
# ~150 MB against ~110 MB at 10,000.
BATCH = 20_000
SWAP_ATTEMPTS = 3
_SOURCES = (
    "messages.py",
    "chats.py",
    "payload.py",
    "tables.py",
    "plan.py",
    "writer.py",
    "bulk.py",
    "feed.py",
    "runner.py",
    "shadow.py",
    "rebuild.py",
)


class RebuildError(ZaplineError):
    """A rebuild cannot start or finish."""


class AlreadyRunning(RebuildError):
    """Another process is rebuilding this projection."""


@dataclass
class Outcome:
    """How a run ended: swapped, built (dry run) or paused (stopped before the swap)."""

    state: str
    events: int = 0
    summary: Summary | None = None
    feed: list[FeedItem] = field(default_factory=list)
    feed_changes: int = 0
    # How long the swap held the projection's lock: the live projection waited that long.
    locked_seconds: float = 0.0


Progress = Callable[[int, int], None]


def run(
    conn: Any,
    name: str = PROJECTION,
    *,
    dry_run: bool = False,
    progress: Progress = lambda done, total: None,
    on_summary: Callable[[Summary], None] = lambda summary: None,
    should_stop: Callable[[], bool] = lambda: False,
    batch: int = BATCH,
) -> Outcome:
    """Rebuild `name` without read downtime; resume a shadow left by an interrupted run.

    Raises:
        AlreadyRunning: another process holds this projection's rebuild lock.
        RebuildError: the projection is unknown, or the swap could not take its locks.
    """
    if name != PROJECTION:
        raise RebuildError(f"unknown projection {name!r}")
    conn.autocommit = False
    _take_rebuild_lock(conn, name)
    try:
        done, total = _prepare(conn, name, dry_run)
        progress(done, total)
        done = _build(conn, name, done, total, progress, should_stop, batch)
        if should_stop():
            return Outcome("paused", done)
        for attempt in range(1, SWAP_ATTEMPTS + 1):
            try:
                since = note_differences(conn)
                return _swap(conn, name, dry_run, on_summary, batch, done, since)
            except psycopg2.errors.LockNotAvailable as error:
                conn.rollback()
                log.warning("swap could not take its locks", extra={"fields": {"try": attempt}})
                if attempt == SWAP_ATTEMPTS:
                    raise RebuildError(f"swap: {str(error).strip()}") from error
                done = _build(conn, name, done, total, progress, should_stop, batch)
        raise AssertionError("not reached")
    except Exception as error:
        # A lost connection cannot roll back: its error is not the one to report.
        with contextlib.suppress(psycopg2.Error):
            conn.rollback()
        _set_failed(conn, name, error)
        raise
    finally:
        _release_rebuild_lock(conn, name)


def discard(conn: Any, name: str = PROJECTION) -> bool:
    """Drop a shadow left by a dry run or an interrupted rebuild; False when there is none
    (the record of the last rebuild is then left as it is).

    Raises:
        AlreadyRunning: a rebuild is running; it would be left without its tables.
    """
    _take_rebuild_lock(conn, name)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (SHADOW.messages,))
            if not cur.fetchone()[0]:
                return False
            drop_shadow(cur)
            cur.execute(
                "UPDATE rebuilds SET state = 'discarded', updated_at = now(),"
                " finished_at = now() WHERE projection = %s",
                (name,),
            )
            return True
    finally:
        _release_rebuild_lock(conn, name)


def is_running(cur: Any, name: str = PROJECTION) -> bool:
    """Whether a session of this database holds the rebuild lock of `name`."""
    return lock_listed(cur, _rebuild_lock(name), granted=True)


# --- phases ---------------------------------------------------------------------------------


def _prepare(conn: Any, name: str, dry_run: bool) -> tuple[int, int]:
    """Resume the shadow if it was built by this code, else start one; return (done, total)."""
    with conn, conn.cursor() as cur:
        version = _version(cur)
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (SHADOW.messages,))
        shadow_exists = cur.fetchone()[0]
        cur.execute(
            "SELECT version, events_done FROM rebuilds WHERE projection = %s FOR UPDATE", (name,)
        )
        row = cur.fetchone()
        cur.execute("SELECT count(*) FROM events")
        total = int(cur.fetchone()[0])
        if shadow_exists and row is not None and row[0] == version:
            cur.execute(
                "UPDATE rebuilds SET state = 'building', dry_run = %s, events_total = %s,"
                " error = NULL, updated_at = now(), run_started_at = now(),"
                " run_from = events_done WHERE projection = %s",
                (dry_run, total, name),
            )
            log.info("resuming rebuild", extra={"fields": {"events_done": row[1]}})
            return int(row[1]), total
        drop_shadow(cur)
        for live, shadow in PAIRS:
            cur.execute(f"CREATE TABLE {shadow} (LIKE {live} INCLUDING ALL)")
        cur.execute(
            "INSERT INTO rebuilds (projection, state, version, dry_run, events_total,"
            " started_at, run_started_at) VALUES (%s, 'building', %s, %s, %s, now(), now())"
            " ON CONFLICT (projection) DO UPDATE SET state = 'building',"
            " version = EXCLUDED.version, txid = 0, position = 0, events_done = 0,"
            " events_total = EXCLUDED.events_total, dry_run = EXCLUDED.dry_run,"
            " summary = NULL, error = NULL, started_at = now(), updated_at = now(),"
            " run_started_at = now(), run_from = 0, finished_at = NULL",
            (name, version, dry_run, total),
        )
        return 0, total


def _build(
    conn: Any,
    name: str,
    done: int,
    total: int,
    progress: Progress,
    should_stop: Callable[[], bool],
    batch: int,
) -> int:
    """Apply batches to the shadow until it is within one batch of the live checkpoint."""
    while not should_stop():
        with collector_paused(), conn, conn.cursor() as cur:
            # The shadow is rebuildable: a crash may lose its last batches, never their order.
            cur.execute("SET LOCAL synchronous_commit = off")
            applied = _apply_shadow_batch(cur, name, _live_checkpoint(cur), batch)
        done += applied
        progress(done, max(total, done))
        if applied < batch:
            break
    return done


def _swap(
    conn: Any,
    name: str,
    dry_run: bool,
    on_summary: Callable[[Summary], None],
    batch: int,
    done: int,
    since: int,
) -> Outcome:
    with conn, conn.cursor() as cur:
        cur.execute("SET LOCAL lock_timeout = '10s'")
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id(name),))
        locked_at = time.monotonic()
        live = _live_checkpoint(cur)
        while applied := _apply_shadow_batch(cur, name, live, batch):
            done += applied
        refresh_media_status(cur)
        note_written_since(cur, since)
        summary = summarise(cur)
        on_summary(summary)
        if dry_run:
            _finish(cur, name, "built", summary)
            return Outcome("built", done, summary, locked_seconds=time.monotonic() - locked_at)
        feed, count = emit_differences(cur)
        cur.execute("DELETE FROM parked WHERE projection = %s", (name,))
        cur.execute(
            "UPDATE parked SET projection = %s WHERE projection = %s", (name, SHADOW.parked_as)
        )
        _lock_live_tables(cur)
        for live_table, shadow in PAIRS:
            _replace(cur, live_table, shadow)
        _finish(cur, name, "done", summary)
    return Outcome("done", done, summary, feed, count, time.monotonic() - locked_at)


# Taking the live tables for the renames: readers queue behind a waiting lock, so each try
# waits briefly, and the tries go on, with pauses for those readers, for up to ~15 s in all.
LOCK_TRIES = 30
LOCK_WAIT = "200ms"
LOCK_PAUSE_SECONDS = 0.3


def _lock_live_tables(cur: Any) -> None:
    """Lock the live tables for the renames, a short wait at a time.

    Raises:
        psycopg2.errors.LockNotAvailable: other sessions held them all along; the message
            names those sessions (an open transaction that read the tables, typically).
    """
    tables = ", ".join(live for live, _ in PAIRS)
    for _ in range(LOCK_TRIES):
        cur.execute("SAVEPOINT swap_locks")
        try:
            cur.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")
            cur.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
            return
        except psycopg2.errors.LockNotAvailable:
            cur.execute("ROLLBACK TO SAVEPOINT swap_locks")
            time.sleep(LOCK_PAUSE_SECONDS)
    raise psycopg2.errors.LockNotAvailable(
        f"the live tables stayed locked by other sessions: {_lock_holders(cur)}; end those"
        " (or wait for them) and run the rebuild again: it resumes from its shadow"
    )


def _lock_holders(cur: Any) -> str:
    cur.execute(
        "SELECT DISTINCT a.pid, a.state, extract(epoch FROM now() - a.xact_start)::int,"
        " left(a.query, 60) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.relation = ANY(%s::regclass[]) AND l.pid <> pg_backend_pid()",
        ([live for live, _ in PAIRS],),
    )
    holders = [
        f"pid {pid} ({state}, in a transaction for {seconds} s: {query!r})"
        for pid, state, seconds, query in cur.fetchall()
    ]
    return "; ".join(holders) or "none left by now"


# --- steps ----------------------------------------------------------------------------------


def _apply_shadow_batch(cur: Any, name: str, live: Cursor, batch: int) -> int:
    cur.execute("SELECT txid, position FROM rebuilds WHERE projection = %s FOR UPDATE", (name,))
    txid, position = cur.fetchone()
    read = read_after(cur, Cursor(txid, position), batch, upto=live)
    if not read:
        return 0
    apply_or_park(cur, [event for _, event in read], tables=SHADOW)
    last = read[-1][0]
    cur.execute(
        "UPDATE rebuilds SET txid = %s, position = %s, events_done = events_done + %s,"
        " updated_at = now() WHERE projection = %s",
        (last.txid, last.position, len(read), name),
    )
    return len(read)


def _live_checkpoint(cur: Any) -> Cursor:
    cur.execute("SELECT txid, position FROM checkpoints WHERE projection = %s", (PROJECTION,))
    txid, position = cur.fetchone()
    return Cursor(txid, position)


def _replace(cur: Any, live: str, shadow: str) -> None:
    """Put `shadow` in the place of `live`, indexes and constraints keeping their names."""
    names = _index_names(cur, live)
    shadow_names = _index_names(cur, shadow)
    cur.execute(f"DROP TABLE {live}")
    cur.execute(f"ALTER TABLE {shadow} RENAME TO {live}")
    for shape, index in shadow_names.items():
        wanted = names.get(shape)
        if wanted is not None and wanted != index:
            cur.execute(f'ALTER INDEX "{index}" RENAME TO "{wanted}"')


def _index_names(cur: Any, table: str) -> dict[str, str]:
    """Index name by its definition with the index and table names taken out."""
    cur.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass",
        (table,),
    )
    found = {}
    for index, definition in cur.fetchall():
        shape = re.sub(r"INDEX \S+ ON \S+", "INDEX ON", definition)
        found[shape] = index
    return found


def _finish(cur: Any, name: str, state: str, summary: Summary) -> None:
    cur.execute(
        "UPDATE rebuilds SET state = %s, summary = %s, updated_at = now(), finished_at = now()"
        " WHERE projection = %s",
        (state, psycopg2.extras.Json(summary.tables), name),
    )


def _set_failed(conn: Any, name: str, error: Exception) -> None:
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE rebuilds SET state = 'failed', error = %s, updated_at = now()"
                " WHERE projection = %s",
                (f"{type(error).__name__}: {error}"[:2000], name),
            )
    except psycopg2.errors.UndefinedTable:
        pass  # not migrated: there is no rebuild to record, and the error says so
    except psycopg2.Error:
        log.warning("could not record the failed rebuild")


def _version(cur: Any) -> str:
    """A digest of the projection code and of the live tables' columns."""
    digest = hashlib.sha256()
    folder = Path(__file__).resolve().parent
    for source in _SOURCES:
        digest.update((folder / source).read_bytes())
    cur.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = ANY(%s)"
        " ORDER BY table_name, ordinal_position",
        ([live for live, _ in PAIRS],),
    )
    digest.update(repr(cur.fetchall()).encode())
    return digest.hexdigest()[:16]


def _rebuild_lock(name: str) -> int:
    return lock_id(f"{name}.rebuild")


def _take_rebuild_lock(conn: Any, name: str) -> None:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (_rebuild_lock(name),))
        if not cur.fetchone()[0]:
            raise AlreadyRunning(f"a rebuild of {name} is already running")


def _release_rebuild_lock(conn: Any, name: str) -> None:
    # A broken connection has released its session lock already.
    with contextlib.suppress(psycopg2.Error):
        conn.rollback()
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_rebuild_lock(name),))
