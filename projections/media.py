"""Media rows: their states (pending -> stored | failed), and how a change reaches the feed.

A media row is created `pending` by the runner with its message. The media actor moves it;
each move that changes the message's `media` field also rewrites the message row and appends
a `message.updated` to the feed, in one transaction under the projection's advisory lock, so
a projector batch that loaded the message earlier can never write the old state back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from events.jsontext import dumps
from projections import runner
from projections.feed import FeedItem, append_feed
from projections.tables import PROJECTION

STATES = ("pending", "stored", "failed")
_COLUMNS = "id, instance, key_id, status, mimetype, size, sha256, attempts, reason"


@dataclass(frozen=True)
class Media:
    """One media row as the media actor sees it."""

    id: int
    instance: str
    key_id: str
    status: str
    mimetype: str | None
    size: int | None
    sha256: str | None
    attempts: int
    reason: str | None


def begin_attempt(conn: Any, media_id: int) -> Media | None:
    """Count one more attempt at a pending media and return it; None unless it is pending."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE media SET attempts = attempts + 1, updated_at = now()"
            f" WHERE id = %s AND status = 'pending' RETURNING {_COLUMNS}",
            (media_id,),
        )
        row = cur.fetchone()
    return Media(*row) if row else None


def record_stored(
    conn: Any, media_id: int, *, sha256: str, size: int, mimetype: str | None, storage_key: str
) -> list[FeedItem]:
    """Mark a pending media stored; return the feed item (none when it was not pending)."""
    return _finish(
        conn,
        media_id,
        "UPDATE media SET status = 'stored', sha256 = %s, size = %s,"
        " mimetype = coalesce(%s, mimetype), storage_key = %s, reason = NULL, updated_at = now()"
        f" WHERE id = %s AND status = 'pending' RETURNING {_COLUMNS}",
        (sha256, size, mimetype, storage_key, media_id),
    )


def record_failed(conn: Any, media_id: int, reason: str) -> list[FeedItem]:
    """Mark a pending media failed with its error; return the feed item."""
    return _finish(
        conn,
        media_id,
        "UPDATE media SET status = 'failed', reason = %s, updated_at = now()"
        f" WHERE id = %s AND status = 'pending' RETURNING {_COLUMNS}",
        (reason[:2000], media_id),
    )


def record_reason(conn: Any, media_id: int, reason: str, *, tried: bool = True) -> None:
    """Say why a media is still pending (waiting for a source, or the last attempt's error).

    `tried=False` takes back the attempt begin_attempt counted: with no source nothing was
    tried, and a source configured later must get all its attempts.
    """
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE media SET reason = %s, attempts = attempts - %s, updated_at = now()"
            " WHERE id = %s AND status = 'pending'",
            (reason[:2000], 0 if tried else 1, media_id),
        )


def requeue(conn: Any, status: str, *, dry_run: bool = False) -> list[int]:
    """Put every media in `status` back to pending with its attempts reset; return their ids."""
    with conn, conn.cursor() as cur:
        if dry_run:
            cur.execute("SELECT id FROM media WHERE status = %s ORDER BY id", (status,))
            return [media_id for (media_id,) in cur.fetchall()]
        # Before any media row lock, in the projector's order: runner.py locks, writer.py upserts.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (runner.lock_id(PROJECTION),))
        cur.execute(
            "UPDATE media SET status = 'pending', attempts = 0, updated_at = now()"
            f" WHERE status = %s RETURNING {_COLUMNS}",
            (status,),
        )
        found = sorted((Media(*row) for row in cur.fetchall()), key=lambda m: m.id)
        for media in found:  # failed -> pending changes the message's media field too
            _publish(cur, media)
    return [media.id for media in found]


def stale(conn: Any, *, idle_seconds: float, limit: int = 500) -> list[int]:
    """Pending media nothing has tried for `idle_seconds`: their message may have been lost."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id FROM media WHERE status = 'pending'"
            " AND updated_at < now() - make_interval(secs => %s) ORDER BY updated_at LIMIT %s",
            (idle_seconds, limit),
        )
        return [media_id for (media_id,) in cur.fetchall()]


def counts(conn: Any) -> dict[str, int]:
    """How many media are in each state."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM media GROUP BY status")
        found = dict(cur.fetchall())
    return {state: int(found.get(state, 0)) for state in STATES}


def reasons(conn: Any, limit: int = 3) -> list[dict[str, Any]]:
    """The commonest reasons media are not stored (waiting for a source, failed), most first."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT status, reason, count(*) FROM media"
            " WHERE status <> 'stored' AND reason IS NOT NULL"
            " GROUP BY status, reason ORDER BY count(*) DESC, status, reason LIMIT %s",
            (limit,),
        )
        return [{"status": s, "reason": r, "count": int(n)} for s, r, n in cur.fetchall()]


def _finish(conn: Any, media_id: int, update: str, params: tuple[Any, ...]) -> list[FeedItem]:
    with conn, conn.cursor() as cur:
        # The projector writes whole message rows it loaded under this lock (plan.py, writer.py).
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (runner.lock_id(PROJECTION),))
        cur.execute(update, params)
        row = cur.fetchone()
        if row is None:  # another run got here first (Dramatiq delivers at least once)
            return []
        return _publish(cur, Media(*row))


def _publish(cur: Any, media: Media) -> list[FeedItem]:
    """Copy the media's state into its message and append the change to the feed."""
    cur.execute(
        "SELECT data FROM messages WHERE instance = %s AND key_id = %s FOR UPDATE",
        (media.instance, media.key_id),
    )
    row = cur.fetchone()
    if row is None or not isinstance(row[0].get("media"), dict):
        return []
    message = row[0]
    message["media"] = {
        **message["media"],
        "id": media.id,
        "status": media.status,
        "mimetype": media.mimetype,
        "size": media.size,
        "sha256": media.sha256,
    }
    text = dumps(message)
    cur.execute(
        "UPDATE messages SET data = %s::jsonb, updated_at = now()"
        " WHERE instance = %s AND key_id = %s",
        (text, media.instance, media.key_id),
    )
    return append_feed(cur, [("message.updated", (media.instance, media.key_id), message, text)])
