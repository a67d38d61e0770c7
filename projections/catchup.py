"""Catching a projection up: batch after batch until no event is left.

Given a second connection, the next batch is read, planned and rendered (turned into COPY
lines) on it while the previous one is written and committed on the first, so Python's share
of the work (decoding, projecting, encoding) and PostgreSQL's (storing rows and the feed) run
at the same time: the writing thread has little Python left to wait for the other thread's
turn with the interpreter lock. That stays exactly-once because:

- the writing connection holds the projection's lock for the whole run (released at least
  every HOLD_SECONDS), so no other runner, replay or media update writes projection rows
  meanwhile: what the planner loads is current, except what the batch in flight changes;
- that batch's changed states are handed on as an overlay and loaded from it instead;
- each batch commits rows, feed and checkpoint in one transaction that first checks the
  checkpoint is where the previous batch left it.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from events.store import Cursor, read_after
from projections import runner
from projections.plan import NO_OVERLAY, plan_events
from projections.runner import Busy
from projections.tables import PROJECTION, Batch
from projections.writer import Rendered, render, write_rendered

# How long one run keeps the projection's lock before letting others (a media update, replay,
# a rebuild's swap, another worker) have a turn. Runs that kept it through a backlog unless
# someone waited were no faster (0.92-1.50x over eight bench runs): each run's last commit,
# waited out with nothing planned, costs too little to see.
HOLD_SECONDS = 1.0


def freeze_start_up_objects() -> None:
    """Freeze what start-up made out of the cyclic garbage collector's walks, for good.

    Call once, after start-up. Batches keep the collector out altogether (collector_paused);
    this spares the collections between them from walking every object the imports left.
    """
    gc.freeze()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Keep the cyclic garbage collector out of a batch, and collect what it left after.

    Until a batch ends, ~100 of its objects per event are alive, so a collection in the
    middle walks them all: even at a threshold of 50,000 that was 7-10% of catch-up's CPU.
    Once it ends, reference counting has freed them and the young generations are nearly
    empty. Uses in several threads at once leave the collector enabled after the first ends.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect(1)


class Moved(Exception):
    """The checkpoint is not where this run left it: someone else projected meanwhile."""


def catch_up(
    conn: Any,
    planner: Any = None,
    *,
    wait: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
    after_commit: Callable[[Batch], None] = lambda batch: None,
    settle_seconds: float = 2.0,
) -> int:
    """Run batches until nothing is left; return how many events were projected.

    With `planner`, a second connection, a backlog (a batch that came back full) is worked
    off planning each batch on it while the previous one commits on `conn`. When events
    exist that a still-running older transaction keeps back (invariant 4), keep looking for
    up to `settle_seconds` instead of leaving them to the next poll.
    """
    total = 0
    settle_until: float | None = None
    backlog = False
    while not should_stop():
        with collector_paused():
            try:
                if planner is not None and backlog:
                    done, cursor = _overlapped(conn, planner, wait, should_stop, after_commit)
                else:
                    # Live traffic makes small batches: one connection answers them soonest.
                    batch = runner.run_batch(conn, limit=runner.BATCH_SIZE, wait=wait)
                    if batch.events:
                        after_commit(batch)
                    done, cursor = batch.events, batch.cursor
            except runner.REFUSED:
                # Once more, each event on its own where need be, parking those refused.
                batch = runner.run_batch(
                    conn, limit=runner.BATCH_SIZE, wait=wait, park_refused=True
                )
                if batch.events:
                    after_commit(batch)
                done, cursor = batch.events, batch.cursor
        backlog = done >= runner.BATCH_SIZE
        if done:
            total += done
            settle_until = None
            continue
        if not _has_events_after(conn, cursor):
            return total
        settle_until = settle_until or time.monotonic() + settle_seconds
        if time.monotonic() > settle_until:
            return total
        time.sleep(0.01)
    return total


def _overlapped(
    writer: Any,
    planner: Any,
    wait: bool,
    should_stop: Callable[[], bool],
    after_commit: Callable[[Batch], None],
) -> tuple[int, Cursor]:
    """One run under the lock; return (events projected, checkpoint after them)."""
    _lock(writer, wait)
    try:
        cursor = _checkpoint(writer)
        total = 0
        overlay = NO_OVERLAY
        written: dict[tuple[str, str], dict[str, Any]] = {}
        pending: Future[Batch] | None = None
        until = time.monotonic() + HOLD_SECONDS
        with ThreadPoolExecutor(1, thread_name_prefix="zapline-writer") as pool:
            try:
                while not should_stop() and time.monotonic() < until:
                    with planner, planner.cursor() as cur:
                        read = read_after(cur, cursor, runner.BATCH_SIZE)
                        if not read:
                            break
                        plan = plan_events(cur, [e for _, e in read], overlay=overlay)
                    rendered = render(plan)
                    if pending is not None:
                        batch, pending = pending.result(), None
                        total += batch.events
                        written = batch.written
                        after_commit(batch)
                    end = read[-1][0]
                    pending = pool.submit(
                        _commit, writer, rendered, cursor, end, len(read), written
                    )
                    overlay, cursor = plan.overlay(), end
            finally:
                if pending is not None:
                    batch = pending.result()
                    total += batch.events
                    after_commit(batch)
        return total, cursor
    finally:
        _unlock(writer)


def _commit(
    conn: Any,
    rendered: Rendered,
    start: Cursor,
    end: Cursor,
    events: int,
    written_before: dict[tuple[str, str], dict[str, Any]],
) -> Batch:
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT txid, position FROM checkpoints WHERE projection = %s FOR UPDATE",
            (PROJECTION,),
        )
        found = Cursor(*cur.fetchone())
        if found != start:
            raise Moved(f"checkpoint at {found}, expected {start}")
        batch = write_rendered(cur, rendered, written_before=written_before)
        cur.execute(
            "UPDATE checkpoints SET txid = %s, position = %s, updated_at = now()"
            " WHERE projection = %s",
            (end.txid, end.position, PROJECTION),
        )
    batch.events, batch.cursor = events, end
    return batch


def _lock(conn: Any, wait: bool) -> None:
    """Take the projection's lock for this session (not just one transaction)."""
    with conn, conn.cursor() as cur:
        if wait:
            cur.execute("SET LOCAL lock_timeout = '10s'")
            cur.execute("SELECT pg_advisory_lock(%s)", (runner.lock_id(PROJECTION),))
            return
        cur.execute("SELECT pg_try_advisory_lock(%s)", (runner.lock_id(PROJECTION),))
        if not cur.fetchone()[0]:
            raise Busy(PROJECTION)


def _unlock(conn: Any) -> None:
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (runner.lock_id(PROJECTION),))
    except Exception:
        # Ending the session is the other way to release a session lock; a broken
        # connection has already lost it.
        with contextlib.suppress(Exception):
            conn.close()


def _checkpoint(conn: Any) -> Cursor:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT txid, position FROM checkpoints WHERE projection = %s", (PROJECTION,))
        return Cursor(*cur.fetchone())


def _has_events_after(conn: Any, cursor: Cursor) -> bool:
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT EXISTS (SELECT 1 FROM events WHERE (txid, position) > (%s::text::xid8, %s))",
            (str(cursor.txid), cursor.position),
        )
        return bool(cur.fetchone()[0])
