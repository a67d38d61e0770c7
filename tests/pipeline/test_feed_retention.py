"""The feed keeps at least the last 7 days or 100,000 changes per instance, whichever is more."""

from __future__ import annotations

import psycopg2
import pytest

from projections.feed import FEED_KEEP_CHANGES, prune_feed
from tests.conftest import sql

pytestmark = pytest.mark.services


def _feed(url: str, instance: str, count: int, head: int, age_days: int) -> None:
    sql(
        url,
        "INSERT INTO feed (instance, cursor, kind, key, data, created_at)"
        " SELECT %s, c, 'chat.updated', 'k', '{}', now() - make_interval(days => %s)"
        " FROM generate_series(%s, %s) AS c",
        (instance, age_days, head - count + 1, head),
    )
    sql(url, "INSERT INTO feed_heads (instance, cursor) VALUES (%s, %s)", (instance, head))


def test_pruning_drops_only_changes_both_older_than_7_days_and_beyond_the_last_100000(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    head = FEED_KEEP_CHANGES + 50
    _feed(url, "old", head, head, age_days=8)  # old: the 50 beyond the last 100,000 go
    _feed(url, "recent", head, head, age_days=1)  # recent: all kept
    _feed(url, "short", 20, 20, age_days=30)  # old but few: all kept
    conn = psycopg2.connect(url)
    try:
        removed = prune_feed(conn)
    finally:
        conn.close()
    counts = dict(sql(url, "SELECT instance, count(*) FROM feed GROUP BY instance"))
    assert removed == 50
    assert counts == {"old": FEED_KEEP_CHANGES, "recent": head, "short": 20}
    assert sql(url, "SELECT min(cursor) FROM feed WHERE instance = 'old'") == [(51,)]
