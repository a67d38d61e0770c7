"""The rebuild's shadow tables: where they are, and how they differ from the live ones."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from projections.feed import FeedItem, append_feed
from projections.tables import PROJECTION, Tables

SHADOW = Tables(
    messages="messages__rebuild",
    holds="message_holds__rebuild",
    chats="chats__rebuild",
    parked_as=f"{PROJECTION}:rebuild",
    feed=False,
)
PAIRS = (("messages", SHADOW.messages), ("message_holds", SHADOW.holds), ("chats", SHADOW.chats))

# Feed changes a swap hands back for live fan-out; beyond this, sockets fill from the feed.
PUBLISH_AT_MOST = 10_000

_KEYS = {"messages": "key_id", "message_holds": "key_id", "chats": "chat_jid"}
# The keys to compare at the swap, of two kinds: a message's (its messages row and its hold
# share them: a hold is deleted only where its message's row is written) and a chat's.
_DIFFERING = "zapline_rebuild_differing"
_KIND = {"messages": "message", "message_holds": "message", "chats": "chat"}
# What readers see of a row: its data, and the columns that place and order it.
_COMPARED = {
    "messages": ("data", "chat_jid", "sent_at"),
    "message_holds": ("held",),
    "chats": ("data", "last_message_at"),
}


@dataclass
class Summary:
    """What differs between the shadow and the live projection, per table."""

    tables: dict[str, dict[str, int]] = field(default_factory=dict)

    def render(self) -> str:
        return "; ".join(
            f"{name}: {c['added']} added, {c['removed']} removed, {c['changed']} changed"
            for name, c in self.tables.items()
        )


def note_differences(conn: Any) -> int:
    """Note in _DIFFERING the keys whose rows differ between the live tables and the shadow,
    without the projection's lock; return the oldest transaction id that comparison did not
    see. Every row written after it has an xmin at or past that id (or past it modulo 2^32,
    since xmin is its low 32 bits), so the swap need compare only these keys and those rows.
    """
    with conn, conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        since = int(cur.fetchone()[0])
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_DIFFERING} (kind text, instance text, key text)"
            f" ON COMMIT PRESERVE ROWS; TRUNCATE {_DIFFERING}"
        )
        for live, shadow in PAIRS:
            key = _KEYS[live]
            cur.execute(
                f"INSERT INTO {_DIFFERING} SELECT %s, coalesce(l.instance, s.instance),"
                f" coalesce(l.{key}, s.{key}) FROM {live} l FULL JOIN {shadow} s"
                f" ON l.instance = s.instance AND l.{key} = s.{key}"
                f" WHERE l.{key} IS NULL OR s.{key} IS NULL OR {_differs(live)}",
                (_KIND[live],),
            )
    return since


def note_written_since(cur: Any, since: int) -> None:
    """Add to _DIFFERING the keys of rows written, on either side, since transaction `since`:
    rows whose xmin follows it or is it, compared as PostgreSQL compares transaction ids (the
    low 32 bits, modulo 2^32, within 2^31; the permanent ids below 3 precede all). A row
    frozen more than 2^31 transactions ago may count too: one comparison more, never one
    less. No upper bound: this transaction's subtransactions (savepoints) have ids past its
    own, and past any snapshot's xmax."""
    for live, shadow in PAIRS:
        for table in (live, shadow):
            cur.execute(
                f"INSERT INTO {_DIFFERING} SELECT %s, instance, {_KEYS[live]} FROM {table}"
                " WHERE xmin::text::bigint >= 3"
                " AND (xmin::text::bigint - %s + 4294967296) %% 4294967296 < 2147483648",
                (_KIND[live], since % 2**32),
            )


def refresh_media_status(cur: Any) -> None:
    """Take each shadow message's media status from `media`, where the uploader keeps it."""
    cur.execute(
        f"UPDATE {SHADOW.messages} s SET data = jsonb_set(s.data, '{{media,status}}',"
        " to_jsonb(m.status)) FROM media m"
        " WHERE m.instance = s.instance AND m.key_id = s.key_id"
        " AND jsonb_typeof(s.data->'media') = 'object'"
        " AND s.data->'media'->>'status' IS DISTINCT FROM m.status"
    )


def _differs(live: str) -> str:
    """SQL that is true where a live row `l` and its shadow `s` differ as readers see them."""
    return " OR ".join(f"l.{c} IS DISTINCT FROM s.{c}" for c in _COMPARED[live])


def _candidates(kind: str) -> str:
    """The distinct keys of a kind noted in _DIFFERING, as a FROM item `k`."""
    return f"(SELECT DISTINCT instance, key FROM {_DIFFERING} WHERE kind = '{kind}') k"


def summarise(cur: Any) -> Summary:
    """Count what differs: only noted keys can (see note_differences)."""
    summary = Summary()
    for live, shadow in PAIRS:
        key = _KEYS[live]
        cur.execute(
            f"SELECT count(s.{key}) FILTER (WHERE l.{key} IS NULL),"
            f" count(l.{key}) FILTER (WHERE s.{key} IS NULL),"
            f" count(*) FILTER (WHERE l.{key} IS NOT NULL AND s.{key} IS NOT NULL"
            f" AND ({_differs(live)}))"
            f" FROM {_candidates(_KIND[live])}"
            f" LEFT JOIN {live} l ON l.instance = k.instance AND l.{key} = k.key"
            f" LEFT JOIN {shadow} s ON s.instance = k.instance AND s.{key} = k.key"
        )
        added, removed, changed = cur.fetchone()
        summary.tables[live] = {"added": added, "removed": removed, "changed": changed}
    return summary


def emit_differences(cur: Any) -> tuple[list[FeedItem], int]:
    """Append a feed change for every message and chat the shadow adds or changes."""
    queries = (
        f"SELECT CASE WHEN l.key_id IS NULL THEN 'message.created' ELSE 'message.updated' END,"
        f" s.instance, s.key_id, s.data::text FROM {_candidates('message')}"
        f" JOIN {SHADOW.messages} s ON s.instance = k.instance AND s.key_id = k.key"
        " LEFT JOIN messages l ON l.instance = s.instance AND l.key_id = s.key_id"
        " WHERE l.key_id IS NULL OR l.data <> s.data ORDER BY s.position, s.instance, s.key_id",
        f"SELECT 'chat.updated', s.instance, s.chat_jid, s.data::text FROM {_candidates('chat')}"
        f" JOIN {SHADOW.chats} s ON s.instance = k.instance AND s.chat_jid = k.key"
        " LEFT JOIN chats l ON l.instance = s.instance AND l.chat_jid = s.chat_jid"
        " WHERE l.chat_jid IS NULL OR l.data <> s.data ORDER BY s.instance, s.chat_jid",
    )
    kept: list[FeedItem] = []
    count = 0
    for n, query in enumerate(queries):
        with cur.connection.cursor(name=f"zapline_rebuild_diff_{n}") as rows:
            rows.itersize = 2000
            rows.execute(query)
            while chunk := rows.fetchmany(2000):
                items = [
                    (kind, (instance, key), json.loads(text), text)
                    for kind, instance, key, text in chunk
                ]
                appended = append_feed(cur, items)
                count += len(appended)
                if count <= PUBLISH_AT_MOST:
                    kept += appended
    return (kept if count <= PUBLISH_AT_MOST else []), count


def drop_shadow(cur: Any) -> None:
    """Drop the shadow tables and the events parked while they were built."""
    for _, shadow in PAIRS:
        cur.execute(f"DROP TABLE IF EXISTS {shadow}")
    cur.execute("DELETE FROM parked WHERE projection = %s", (SHADOW.parked_as,))
