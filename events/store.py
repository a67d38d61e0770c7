"""EventStore: idempotent appends to the append-only log and gap-safe forward reads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from events import jsontext
from events.attachments import CHUNK_BYTES, Attachment
from events.errors import StoreRejected, StoreUnavailable, first_line
from events.event import Event
from events.pool import Pool
from events.webhook import Webhook

# Reads decode payloads (and every other jsonb value) with orjson where it is exact.
jsontext.register()


@dataclass(frozen=True)
class Appended:
    """Where a webhook landed, and whether an earlier delivery had already stored it."""

    position: int
    duplicate: bool


class Cursor(NamedTuple):
    """A reader's place in the log: (writing transaction id, position), compared in that order."""

    txid: int = 0
    position: int = 0


_INSERT_EVENTS = """
    INSERT INTO events (instance, type, dedupe_key, payload)
    SELECT r.instance, r.type, r.dedupe_key, r.payload::jsonb
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])
         WITH ORDINALITY AS r(instance, type, dedupe_key, payload, n)
    ORDER BY r.n
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING dedupe_key, position
"""

# Only transactions older than every transaction still running are final: a transaction that
# began earlier may still commit an event with a lower position (design.md invariant 4).
# ORDER BY names the table's columns: a bare `txid` would sort by the selected text, where
# "10" comes before "9" (events would be skipped), and no index could serve it.
_READ_AFTER = """
    SELECT e.txid::text, e.position, e.instance, e.type, e.payload::text
    FROM events e
    WHERE (e.txid, e.position) > (%s::text::xid8, %s)
      AND e.txid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY e.txid, e.position
    LIMIT %s
"""


_READ_BETWEEN = """
    SELECT e.txid::text, e.position, e.instance, e.type, e.payload::text
    FROM events e
    WHERE (e.txid, e.position) > (%s::text::xid8, %s)
      AND (e.txid, e.position) <= (%s::text::xid8, %s)
      AND e.txid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY e.txid, e.position
    LIMIT %s
"""


class EventStore:
    """The event log in PostgreSQL."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def append(self, webhooks: Sequence[Webhook]) -> list[Appended]:
        """Store webhooks in one transaction, each at most once; answer in the same order.

        Raises:
            StoreUnavailable: the database could not take the write; nothing was promised.
            StoreRejected: the database refused one of the rows; nothing was stored.
        """
        with self._pool.connection() as conn:
            try:
                with conn, conn.cursor() as cur:
                    return _append(cur, webhooks)
            except (
                # What the webhook holds (NaN, a number beyond jsonb's range, \u0000).
                psycopg2.DataError,
                # psycopg2 refuses NUL characters and lone surrogates in text parameters.
                ValueError,
            ) as error:
                raise StoreRejected(str(error).strip()) from error
            except psycopg2.Error as error:
                if (error.pgcode or "").startswith("54"):
                    # Too big or too deep for the database (a row for an index, nesting).
                    raise StoreRejected(str(error).strip()) from error
                # Ours, not the webhook's (a schema or permission fault): a 400 would make
                # Evolution drop it for good, a 503 makes it retry.
                raise StoreUnavailable(first_line(error)) from error

    def read_after(self, cursor: Cursor, limit: int = 1000) -> list[tuple[Cursor, Event]]:
        """Return up to `limit` events after `cursor` that no late commit can precede."""
        with self._pool.connection() as conn, conn, conn.cursor() as cur:
            return read_after(cur, cursor, limit)

    def quarantine(
        self, *, path: str, content_type: str | None, reason: str, body: bytes | bytearray
    ) -> int:
        """Keep a body we could not parse for inspection; return its quarantine id."""
        with self._pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO quarantine (path, content_type, reason, body)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (path, content_type, reason[:1000], psycopg2.Binary(body)),
            )
            return int(cur.fetchone()[0])

    def ping(self) -> None:
        """Round-trip to the database.

        Raises:
            StoreUnavailable: it did not answer.
        """
        with self._pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute("SELECT 1")

    def head(self) -> int:
        """Return the highest stored position, 0 for an empty log."""
        with self._pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute("SELECT coalesce(max(position), 0) FROM events")
            return int(cur.fetchone()[0])


def read_after(
    cur: Any, cursor: Cursor, limit: int, upto: Cursor | None = None
) -> list[tuple[Cursor, Event]]:
    """The gap-safe read in a caller's transaction (on a cursor of the caller's connection).

    With `upto`, nothing after that cursor is returned (a rebuild follows the live
    projection's checkpoint without passing it).

    Text comes back as bytes: orjson reads a payload's UTF-8 as it arrives, where a str would
    be decoded by psycopg2 only to be encoded again for orjson. A connection in another
    client encoding gets its text decoded as psycopg2 would.
    """
    codec = psycopg2.extensions.encodings[cur.connection.encoding]
    with cur.connection.cursor() as raw:
        psycopg2.extensions.register_type(psycopg2.extensions.BYTES, raw)
        if upto is None:
            raw.execute(_READ_AFTER, (str(cursor.txid), cursor.position, limit))
        else:
            raw.execute(
                _READ_BETWEEN,
                (str(cursor.txid), cursor.position, str(upto.txid), upto.position, limit),
            )
        rows = raw.fetchall()
    return [
        (
            Cursor(int(txid), position),
            Event(
                position=position,
                instance=instance.decode(codec),
                type=type_.decode(codec),
                payload=jsontext.loads(payload if codec == "utf_8" else payload.decode(codec)),
            ),
        )
        for txid, position, instance, type_, payload in rows
    ]


def _append(cur: Any, webhooks: Sequence[Webhook]) -> list[Appended]:
    for webhook in webhooks:
        if webhook.attachment is not None:
            _store_attachment(cur, webhook.attachment)
    cur.execute(
        _INSERT_EVENTS,
        (
            [w.instance for w in webhooks],
            [w.type for w in webhooks],
            [w.dedupe_key for w in webhooks],
            [w.payload_json for w in webhooks],
        ),
    )
    inserted = dict(cur.fetchall())
    missing = [w.dedupe_key for w in webhooks if w.dedupe_key not in inserted]
    existing: dict[str, int] = {}
    if missing:
        cur.execute(
            "SELECT dedupe_key, position FROM events WHERE dedupe_key = ANY(%s)", (missing,)
        )
        existing = dict(cur.fetchall())
    answers = []
    for webhook in webhooks:
        key = webhook.dedupe_key
        if key in inserted:
            # A second copy of the same webhook within this batch is a duplicate of the first.
            answers.append(Appended(inserted.pop(key), duplicate=False))
            existing[key] = answers[-1].position
        else:
            answers.append(Appended(existing[key], duplicate=True))
    return answers


def _store_attachment(cur: Any, blob: Attachment) -> None:
    """Store a blob once: small ones in one value, large ones as chunks (migration 0003)."""
    if blob.data is not None and blob.size <= CHUNK_BYTES:
        cur.execute(
            "INSERT INTO attachments (sha256, size, mimetype, data) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (sha256) DO NOTHING",
            (blob.sha256, blob.size, blob.mimetype, psycopg2.Binary(blob.data)),
        )
        return
    cur.execute(
        "INSERT INTO attachments (sha256, size, mimetype, data) VALUES (%s, %s, %s, NULL)"
        " ON CONFLICT (sha256) DO NOTHING RETURNING sha256",
        (blob.sha256, blob.size, blob.mimetype),
    )
    if cur.fetchone() is None:  # stored by an earlier delivery: its chunks are there
        return
    for seq, piece in enumerate(blob.chunks()):
        cur.execute(
            "INSERT INTO attachment_chunks (sha256, seq, data) VALUES (%s, %s, %s)",
            (blob.sha256, seq, psycopg2.Binary(piece)),
        )


@dataclass(frozen=True)
class StoredAttachment:
    """What the attachments table holds about a blob."""

    sha256: str
    size: int
    mimetype: str | None
    chunked: bool


def find_attachment(cur: Any, sha256: str) -> StoredAttachment | None:
    """The stored attachment with this sha256, without its bytes."""
    cur.execute("SELECT size, mimetype, data IS NULL FROM attachments WHERE sha256 = %s", (sha256,))
    row = cur.fetchone()
    return StoredAttachment(sha256, row[0], row[1], row[2]) if row else None


def read_attachment(cur: Any, found: StoredAttachment) -> Iterator[bytes]:
    """Yield a stored blob's bytes one chunk (about CHUNK_BYTES) at a time, in order."""
    if found.chunked:
        seq = 0
        while True:
            cur.execute(
                "SELECT data FROM attachment_chunks WHERE sha256 = %s AND seq = %s",
                (found.sha256, seq),
            )
            row = cur.fetchone()
            if row is None:
                return
            yield bytes(row[0])
            seq += 1
    for start in range(0, found.size, CHUNK_BYTES):
        cur.execute(
            "SELECT substring(data from %s for %s) FROM attachments WHERE sha256 = %s",
            (start + 1, CHUNK_BYTES, found.sha256),
        )
        yield bytes(cur.fetchone()[0])
