"""Read routes: an instance's chats, a chat's messages and its change feed, as stored."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import falcon

from api.tokens import ApiAuth
from events.errors import ZaplineError
from events.pool import Pool
from pipeline.fanout import frame as live_frame

CHATS_LIMIT = (50, 500)  # (default, most) items per page
MESSAGES_LIMIT = (50, 500)
FEED_LIMIT = (500, 5000)
_BIGINT_MAX = 2**63 - 1

_CHATS = """
SELECT chat_jid, data::text FROM chats
WHERE instance = %s
ORDER BY last_message_at DESC NULLS LAST, chat_jid
LIMIT %s
"""
_LAST_AT = "SELECT last_message_at FROM chats WHERE instance = %s AND chat_jid = %s"
# The chats after (at, jid) in the list's order. It walks chats_by_activity from the top,
# which stays cheap at the few thousand chats an instance has.
_CHATS_AFTER = """
SELECT chat_jid, data::text FROM chats
WHERE instance = %(instance)s AND (
    last_message_at < %(at)s
    OR (last_message_at = %(at)s AND chat_jid > %(jid)s)
    OR (last_message_at IS NULL AND (%(at)s IS NOT NULL OR chat_jid > %(jid)s))
)
ORDER BY last_message_at DESC NULLS LAST, chat_jid
LIMIT %(limit)s
"""

_SENT_AT = "SELECT sent_at FROM messages WHERE instance = %s AND chat_jid = %s AND key_id = %s"

# Keyset pages over messages_by_chat (instance, chat_jid, sent_at DESC, key_id DESC).
_DATED = """
SELECT key_id, data::text FROM messages
WHERE instance = %s AND chat_jid = %s AND sent_at IS NOT NULL AND (sent_at, key_id) < (%s, %s)
ORDER BY sent_at DESC, key_id DESC
LIMIT %s
"""
_UNDATED = """
SELECT key_id, data::text FROM messages
WHERE instance = %s AND chat_jid = %s AND sent_at IS NULL AND (%s::text IS NULL OR key_id < %s)
ORDER BY key_id DESC
LIMIT %s
"""

_FEED = """
SELECT cursor, kind, data::text
FROM feed
WHERE instance = %s AND cursor > %s
ORDER BY cursor
LIMIT %s
"""
_RETAINED = """
SELECT (SELECT min(cursor) FROM feed WHERE instance = %s),
       (SELECT cursor FROM feed_heads WHERE instance = %s)
"""


class BadQuery(ZaplineError):
    """A read's query parameters are malformed."""


def add_read_routes(app: falcon.App, api_tokens: Mapping[str, frozenset[str]], pool: Pool) -> None:
    """Register the chats, messages and feed routes on `app`."""
    auth = ApiAuth(api_tokens)
    app.add_route("/api/instances/{instance}/chats", ChatsResource(auth, pool))
    app.add_route(
        "/api/instances/{instance}/chats/{chat_jid}/messages", MessagesResource(auth, pool)
    )
    app.add_route("/api/instances/{instance}/feed", FeedResource(auth, pool))


class ChatsResource:
    """GET /api/instances/{instance}/chats?before=&limit=: newest activity first, in pages."""

    def __init__(self, auth: ApiAuth, pool: Pool) -> None:
        self._auth = auth
        self._pool = pool

    def on_get(self, req: falcon.Request, resp: falcon.Response, instance: str) -> None:
        self._auth.require(req, instance)
        limit = _limit(req, *CHATS_LIMIT)
        before = req.get_param("before") or None
        with self._pool.connection() as conn, conn.cursor() as cur:
            # One row more than asked tells whether another page follows.
            rows = _chats_after(cur, instance, before, limit + 1)
        page = rows[:limit]
        next_before = page[-1][0] if len(rows) > limit else None
        _send(resp, [data for _, data in page], next_before=next_before)


class MessagesResource:
    """GET /api/instances/{instance}/chats/{chat_jid}/messages?before=&limit=: newest first."""

    def __init__(self, auth: ApiAuth, pool: Pool) -> None:
        self._auth = auth
        self._pool = pool

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, instance: str, chat_jid: str
    ) -> None:
        self._auth.require(req, instance)
        limit = _limit(req, *MESSAGES_LIMIT)
        before = req.get_param("before") or None
        with self._pool.connection() as conn, conn.cursor() as cur:
            # One row more than asked tells whether another page follows.
            rows = _older_messages(cur, instance, chat_jid, before, limit + 1)
        page = rows[:limit]
        next_before = page[-1][0] if len(rows) > limit else None
        _send(resp, [data for _, data in page], next_before=next_before)


class FeedResource:
    """GET /api/instances/{instance}/feed?after=&limit=: changes in cursor order."""

    def __init__(self, auth: ApiAuth, pool: Pool) -> None:
        self._auth = auth
        self._pool = pool

    def on_get(self, req: falcon.Request, resp: falcon.Response, instance: str) -> None:
        self._auth.require(req, instance)
        after = _whole(req, "after", default=0, low=0)
        limit = _limit(req, *FEED_LIMIT)
        with self._pool.connection() as conn, conn.cursor() as cur:
            rows, reset_to = read_feed(cur, instance, after, limit)
        if reset_to is not None:
            # Where to go on from once the client has reloaded: the head, as the WebSocket's
            # "live" frame names it (a change after it shows in both, which a client applying
            # changes by key takes in its stride).
            _send(resp, [], cursor=reset_to, reset=True)
            return
        _send(resp, [frame for _, frame in rows], cursor=rows[-1][0] if rows else after)


def read_feed(
    cur: Any, instance: str, after: int, limit: int
) -> tuple[list[tuple[int, str]], int | None]:
    """Up to `limit` (cursor, frame JSON) after `after`; and, when the feed cannot go on from
    `after` (the client must reload), the head to go on from after that, else None."""
    cur.execute(_FEED, (instance, after, limit))
    # Framed as live changes are, so both read alike.
    rows = [(cursor, live_frame(cursor, kind, instance, data)) for cursor, kind, data in cur]
    # Read what is retained after the rows, not before: a prune in between then shows as
    # a reset instead of a silent gap.
    cur.execute(_RETAINED, (instance, instance))
    oldest, head = cur.fetchone()
    if _pruned_past(after, oldest, head):
        return [], head or 0
    return rows, None


def _chats_after(cur: Any, instance: str, before: str | None, want: int) -> list[tuple[str, str]]:
    """Up to `want` (chat_jid, data) in the list's order, after the chat `before`.

    Raises:
        BadQuery: `before` is not a chat of this instance.
    """
    if before is None:
        cur.execute(_CHATS, (instance, want))
        return list(cur.fetchall())
    cur.execute(_LAST_AT, (instance, before))
    found = cur.fetchone()
    if found is None:
        raise BadQuery("before must be the chat_jid of a chat of this instance")
    cur.execute(_CHATS_AFTER, {"instance": instance, "at": found[0], "jid": before, "limit": want})
    return list(cur.fetchall())


def _older_messages(
    cur: Any, instance: str, chat_jid: str, before: str | None, want: int
) -> list[tuple[str, str]]:
    """Up to `want` (key_id, data) of a chat, newest first, strictly older than `before`.

    The order is sent_at DESC NULLS LAST, key_id DESC. messages_by_chat keeps NULLs first
    (DESC's default), so dated and undated messages are two index range scans, in that order.

    Raises:
        BadQuery: `before` is not a message of this chat.
    """
    dated_from: tuple[Any, str] | None = ("infinity", "")
    undated_from: str | None = None
    if before is not None:
        cur.execute(_SENT_AT, (instance, chat_jid, before))
        found = cur.fetchone()
        if found is None:
            raise BadQuery("before must be the key_id of a message in this chat")
        if found[0] is None:
            dated_from, undated_from = None, before
        else:
            dated_from = (found[0], before)
    rows: list[tuple[str, str]] = []
    if dated_from is not None:
        cur.execute(_DATED, (instance, chat_jid, *dated_from, want))
        rows = cur.fetchall()
    if len(rows) < want:
        cur.execute(_UNDATED, (instance, chat_jid, undated_from, undated_from, want - len(rows)))
        rows += cur.fetchall()
    return rows


def _pruned_past(after: int, oldest: int | None, head: int | None) -> bool:
    """Whether the client must reload: changes right after `after` were pruned from the
    feed, or `after` is ahead of it (another instance's cursor, or a restored database).

    Cursors have no gaps, so the first retained one is the oldest row's, or the head's next
    when every row of the instance has been pruned.
    """
    if after > (head or 0):
        return True
    first = oldest if oldest is not None else (head + 1 if head is not None else None)
    return first is not None and after < first - 1


def _limit(req: falcon.Request, default: int, most: int) -> int:
    """The `limit` parameter, capped at `most`.

    Raises:
        BadQuery: it is not a whole number of at least 1.
    """
    return min(_whole(req, "limit", default=default, low=1), most)


def _whole(req: falcon.Request, name: str, *, default: int, low: int) -> int:
    """A whole-number query parameter; absent or empty gives `default`.

    Raises:
        BadQuery: it is not a whole number from `low` to the largest bigint.
    """
    found = whole_or_none(req, name, low=low)
    return default if found is None else found


def whole_or_none(req: falcon.Request, name: str, *, low: int) -> int | None:
    """A whole-number query parameter, or None when it is absent or empty.

    Raises:
        BadQuery: it is not a whole number from `low` to the largest bigint.
    """
    raw = req.get_param(name) or ""
    if not raw:
        return None
    if not re.fullmatch(r"[0-9]{1,19}", raw) or not low <= int(raw) <= _BIGINT_MAX:
        raise BadQuery(f"{name} must be a whole number of at least {low}")
    return int(raw)


def _send(resp: falcon.Response, items: list[str], **fields: object) -> None:
    """Answer {"items": [...], **fields} with each item's JSON text spliced in as stored."""
    rest = "".join(f", {json.dumps(name)}: {json.dumps(value)}" for name, value in fields.items())
    resp.content_type = falcon.MEDIA_JSON
    resp.cache_control = ["no-store"]
    resp.text = '{"items": [' + ", ".join(items) + "]" + rest + "}"
