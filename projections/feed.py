"""The change feed: each change a projection makes gets the next cursor of its instance, in
commit order (contract "feed"), and old changes are pruned past the retention."""

from __future__ import annotations

from typing import Any, NamedTuple

import psycopg2.extras

from projections import bulk

# Feed retention (contract "feed"): at least 7 days or 100,000 changes per instance.
FEED_KEEP_DAYS = 7
FEED_KEEP_CHANGES = 100_000


class FeedItem(NamedTuple):
    """One change as clients receive it; `data_json` is `data` as stored in the feed."""

    instance: str
    cursor: int
    kind: str
    data: dict[str, Any]
    data_json: str


class Change(NamedTuple):
    """A change waiting for its cursor; `tail` is its COPY line after the cursor."""

    kind: str
    key: tuple[str, str]
    data: dict[str, Any]
    text: str
    tail: str


def append_feed(
    cur: Any, items: list[tuple[str, tuple[str, str], dict[str, Any], str]]
) -> list[FeedItem]:
    """Give each change (kind, key, data, data as JSON) the next cursor of its instance and
    store it in the feed."""
    return append_changes(cur, [change(*item) for item in items])


def change(
    kind: str, key: tuple[str, str], data: dict[str, Any], text: str, escaped: str | None = None
) -> Change:
    """A feed change; `escaped` is `bulk.copy_json(text)` when the caller has it already."""
    escaped = bulk.copy_json(text) if escaped is None else escaped
    return Change(kind, key, data, text, f"{kind}\t{bulk.copy_text(key[1])}\t{escaped}\n")


def append_changes(cur: Any, changes: list[Change]) -> list[FeedItem]:
    """Store changes made by `change` under the next cursors of their instances."""
    if not changes:
        return []
    counts: dict[str, int] = {}
    for item in changes:
        instance = item.key[0]
        counts[instance] = counts.get(instance, 0) + 1
    # The feed_heads row stays locked until commit: cursors become visible in commit order.
    psycopg2.extras.execute_values(
        cur,
        "INSERT INTO feed_heads AS h (instance, cursor) VALUES %s ON CONFLICT (instance)"
        " DO UPDATE SET cursor = h.cursor + EXCLUDED.cursor RETURNING instance, cursor",
        sorted(counts.items()),
        page_size=1000,
    )
    next_cursor = {instance: head - counts[instance] + 1 for instance, head in cur.fetchall()}
    escaped = {instance: bulk.copy_text(instance) for instance in counts}
    feed, rows = [], []
    for kind, key, data, text, tail in changes:
        instance = key[0]
        cursor = next_cursor[instance]
        next_cursor[instance] += 1
        feed.append(FeedItem(instance, cursor, kind, data, text))
        rows.append(f"{escaped[instance]}\t{cursor}\t{tail}")
    bulk.copy(cur, "feed", "instance, cursor, kind, key, data", rows)
    return feed


def prune_feed(conn: Any) -> int:
    """Drop feed rows older than the retention keeps; return how many."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "DELETE FROM feed f USING feed_heads h"
            " WHERE f.instance = h.instance AND f.cursor <= h.cursor - %s"
            " AND f.created_at < now() - make_interval(days => %s)",
            (FEED_KEEP_CHANGES, FEED_KEEP_DAYS),
        )
        return int(cur.rowcount)
