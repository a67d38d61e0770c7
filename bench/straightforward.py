"""A straightforward Python projector: the reference issue 3 set its catch-up target against.

Issue 3 measured "a straightforward Python projector" at about 11,000 events/s on its machine
and asked for at least 15,000. This is one, written as plainly as that suggests, so each
bench run can say how fast such a projector is on the machine at hand:

- events read by position in batches of 1000, payloads decoded by psycopg2's default jsonb
  reader (the standard library's json);
- each `messages.upsert` turned into a message dict (key id, chat, sender, fromMe, text,
  push name, type, time), encoded with json.dumps;
- per batch, in one transaction: messages inserted (`ON CONFLICT DO NOTHING`), the batch's
  chats upserted with their last message, a feed row per message, the checkpoint moved; all
  with `execute_values`.

It knows nothing of statuses, edits, reactions, out-of-order holds, media, unread counts or
the gap-safe read: it is a yardstick, not a projector to run. Its tables live in a schema of
their own, dropped afterwards.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.extras

SCHEMA = "straightforward"
BATCH = 1000

_TABLES = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.messages (
    instance text, key_id text, chat_jid text, sent_at timestamptz, data jsonb,
    position bigint, PRIMARY KEY (instance, key_id));
CREATE INDEX ON {SCHEMA}.messages (instance, chat_jid, sent_at DESC);
CREATE TABLE {SCHEMA}.chats (
    instance text, chat_jid text, last_message_at timestamptz, data jsonb,
    PRIMARY KEY (instance, chat_jid));
CREATE TABLE {SCHEMA}.feed (
    id bigserial PRIMARY KEY, instance text, kind text, data jsonb,
    created_at timestamptz DEFAULT now());
CREATE TABLE {SCHEMA}.checkpoint (position bigint);
INSERT INTO {SCHEMA}.checkpoint VALUES (0);
"""


def project(url: str, expected: int) -> tuple[int, float]:
    """Project every stored event from position 0; return (events, seconds)."""
    conn = psycopg2.connect(url, connect_timeout=5)
    psycopg2.extras.register_default_jsonb(conn, loads=json.loads)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(_TABLES)
        started = time.perf_counter()
        total, position = 0, 0
        for _ in range(expected // BATCH + 10):
            with conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT position, instance, payload FROM events"
                    " WHERE position > %s ORDER BY position LIMIT %s",
                    (position, BATCH),
                )
                rows = cur.fetchall()
                if not rows:
                    break
                _apply(cur, rows)
            total += len(rows)
            position = rows[-1][0]
        seconds = time.perf_counter() - started
        with conn, conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
        return total, seconds
    finally:
        conn.close()


def _apply(cur: Any, rows: list[tuple[int, str, dict[str, Any]]]) -> None:
    messages, chats = [], {}
    for position, instance, payload in rows:
        data = payload["data"]
        key = data["key"]
        content = data.get("message") or {}
        text = content.get("conversation") or (content.get("extendedTextMessage") or {}).get("text")
        sent_at = datetime.fromtimestamp(int(data["messageTimestamp"]), UTC)
        message = {
            "key_id": key["id"],
            "chat_jid": key["remoteJid"],
            "sender": key.get("participant") or key["remoteJid"],
            "from_me": key["fromMe"],
            "text": text,
            "push_name": data.get("pushName"),
            "type": data.get("messageType"),
            "timestamp": sent_at.isoformat(),
        }
        encoded = json.dumps(message)
        messages.append((instance, key["id"], key["remoteJid"], sent_at, encoded, position))
        chat = {"last_message_preview": text, "name": data.get("pushName")}
        chats[instance, key["remoteJid"]] = (instance, key["remoteJid"], sent_at, json.dumps(chat))
    psycopg2.extras.execute_values(
        cur,
        f"INSERT INTO {SCHEMA}.messages VALUES %s ON CONFLICT DO NOTHING",
        messages,
        page_size=BATCH,
    )
    psycopg2.extras.execute_values(
        cur,
        f"INSERT INTO {SCHEMA}.chats VALUES %s ON CONFLICT (instance, chat_jid) DO UPDATE"
        " SET last_message_at = excluded.last_message_at, data = excluded.data",
        list(chats.values()),
        page_size=BATCH,
    )
    psycopg2.extras.execute_values(
        cur,
        f"INSERT INTO {SCHEMA}.feed (instance, kind, data) VALUES %s",
        [(m[0], "message.created", m[4]) for m in messages],
        page_size=BATCH,
    )
    cur.execute(f"UPDATE {SCHEMA}.checkpoint SET position = %s", (rows[-1][0],))
