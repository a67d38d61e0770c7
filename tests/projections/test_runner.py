"""The runner's writes: what reaches the tables is exactly what the projection computed."""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg2
import pytest

from events.event import Event
from events.pool import Pool
from events.store import EventStore
from events.webhook import parse_webhook
from projections import catchup, messages, runner
from projections.tables import PROJECTION
from tests.conftest import project_all, sql, wait_for

pytestmark = pytest.mark.services

# Characters COPY's text format treats specially, in every column the runner writes.
AWKWARD = 'tab\there, line\nbreak, cr\rhere, back\\slash, \\N, \\\\N, quote" 😀'


def _upsert(instance: str, key_id: str, jid: str, text: str, ts: int) -> dict[str, Any]:
    return {
        "event": "messages.upsert",
        "instance": instance,
        "data": {
            "key": {"id": key_id, "remoteJid": jid, "fromMe": False},
            "pushName": text,
            "message": {"conversation": text},
            "messageTimestamp": ts,
        },
    }


def _append(url: str, bodies: list[dict[str, Any]]) -> None:
    pool = Pool(url, size=1)
    EventStore(pool).append([parse_webhook(json.dumps(b).encode()) for b in bodies])
    pool.close()


def _stored_events(url: str) -> list[Event]:
    rows = sql(url, "SELECT position, instance, type, payload FROM events ORDER BY 1")
    return [Event(*row) for row in rows]


def test_text_copy_treats_specially_is_stored_as_the_projection_made_it(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    bodies = [
        _upsert("plain", "K1", "5511999990000@s.whatsapp.net", AWKWARD, 1764460800),
        _upsert("in\tst\\ance", "K\\N\t2\n", "55\\11\t@s.whatsapp.net", AWKWARD, 1764460801),
        _upsert("plain", "\\N", "\\N", "\\N", 1764460802),
    ]
    _append(url, bodies)
    conn = psycopg2.connect(url)
    assert project_all(conn, url) == 3
    conn.close()

    expected = {}
    for event in _stored_events(url):
        [change] = messages.apply({}, event)
        expected[(change.instance, change.key_id)] = change.message
    stored = sql(url, "SELECT instance, key_id, chat_jid, data FROM messages")
    assert {(i, k): data for i, k, _, data in stored} == expected
    assert {(i, k): jid for i, k, jid, _ in stored} == {
        k: m["chat_jid"] for k, m in expected.items()
    }
    feed = sql(url, "SELECT instance, key, data FROM feed WHERE kind = 'message.created'")
    assert {(i, k): data for i, k, data in feed} == expected
    chats = sql(url, "SELECT instance, chat_jid, data->>'name', meta FROM chats")
    assert {(i, j) for i, j, _, _ in chats} == {
        (i, m["chat_jid"]) for (i, _), m in expected.items()
    }
    assert {name for _, _, name, _ in chats} == {AWKWARD, "\\N"}


def test_batches_applied_in_one_transaction_each_write_their_own_rows(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    jid = "5511999990000@s.whatsapp.net"
    _append(
        url,
        [
            _upsert("acme", "K1", jid, "hello", 1764460800),
            {
                "event": "messages.update",
                "instance": "acme",
                "data": {"keyId": "K1", "remoteJid": jid, "status": "READ"},
            },
            _upsert("acme", "K2", jid, "again", 1764460801),
        ],
    )
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        # as replay and a rebuild's last step do: several batches, one transaction
        for event in _stored_events(url):
            runner.apply_events(cur, [event])
    conn.close()

    assert sql(url, "SELECT key_id, data->>'status' FROM messages ORDER BY 1") == [
        ("K1", "read"),
        ("K2", "delivered"),
    ]
    assert sql(url, "SELECT kind, key FROM feed ORDER BY cursor") == [
        ("message.created", "K1"),
        ("chat.updated", jid),
        ("message.updated", "K1"),
        ("message.created", "K2"),
        ("chat.updated", jid),
    ]
    assert sql(url, "SELECT data->>'unread_count' FROM chats") == [("2",)]


def test_an_update_held_for_a_key_copy_treats_specially_is_applied_when_it_arrives(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    key_id, jid = "H\t\\N\n1", "5511999990000@s.whatsapp.net"
    update = {"keyId": key_id, "remoteJid": jid, "status": "READ"}
    _append(url, [{"event": "messages.update", "instance": "plain", "data": update}])
    conn = psycopg2.connect(url)
    project_all(conn, url)
    [(instance, held_key, held)] = sql(url, "SELECT instance, key_id, held FROM message_holds")
    assert (instance, held_key, len(held)) == ("plain", key_id, 1)

    _append(url, [_upsert("plain", key_id, jid, AWKWARD, 1764460800)])
    project_all(conn, url)
    conn.close()
    assert sql(url, "SELECT key_id, data->>'status', data->>'text' FROM messages") == [
        (key_id, "read", AWKWARD)
    ]
    assert sql(url, "SELECT count(*) FROM message_holds") == [(0,)]


def test_a_batch_whose_checkpoint_cannot_move_commits_none_of_its_rows(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    jid = "5511999990000@s.whatsapp.net"
    _append(url, [_upsert("acme", f"K{n}", jid, "hi", 1764460800 + n) for n in range(3)])
    sql(
        url,
        "CREATE FUNCTION refuse_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN RAISE EXCEPTION 'refused'; END $$; CREATE TRIGGER refuse_checkpoint"
        " BEFORE UPDATE ON checkpoints FOR EACH ROW EXECUTE FUNCTION refuse_checkpoint()",
    )
    conn = psycopg2.connect(url)
    with pytest.raises(psycopg2.errors.RaiseException):
        runner.run_batch(conn)
    conn.close()
    # rows, feed and checkpoint move together (invariant 5): the failed batch left nothing
    for table in ("messages", "chats", "feed", "message_holds"):
        assert sql(url, f"SELECT count(*) FROM {table}") == [(0,)], table
    assert sql(url, "SELECT txid, position FROM checkpoints") == [(0, 0)]


def test_a_batch_waits_for_the_projection_lock_another_runner_holds(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    _append(url, [_upsert("acme", "K1", "5511999990000@s.whatsapp.net", "hi", 1764460800)])
    holder, waiter = psycopg2.connect(url), psycopg2.connect(url)
    catchup._lock(holder, wait=True)
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(runner.run_batch(waiter).events))
    try:
        thread.start()
        thread.join(1.0)
        # one writer at a time: nothing projected while the other holds the lock
        assert done == [] and sql(url, "SELECT count(*) FROM messages") == [(0,)]
    finally:
        catchup._unlock(holder)
    thread.join(15)
    assert done == [1] and sql(url, "SELECT count(*) FROM messages") == [(1,)]
    holder.close()
    waiter.close()


def test_a_lock_is_listed_held_or_waited_for_only_in_its_own_database(
    fresh_database_url: str, database_url: str
) -> None:
    url, other = fresh_database_url, database_url
    key = runner.lock_id(PROJECTION)
    holder, waiter, here, elsewhere = (psycopg2.connect(u) for u in (url, url, url, other))

    def listed(conn: Any, *, granted: bool) -> bool:
        with conn, conn.cursor() as cur:
            return runner.lock_listed(cur, key, granted=granted)

    # given: a session holding the projection's lock and another waiting for it, in one
    # database of a server that holds another database too
    catchup._lock(holder, wait=True)
    thread = threading.Thread(target=catchup._lock, args=(waiter, True))
    try:
        thread.start()
        assert wait_for(lambda: listed(here, granted=False))
        # then: both are listed there, and neither in the other database (advisory lock keys
        # are per database: there they are nobody's)
        assert listed(here, granted=True)
        assert not listed(elsewhere, granted=True) and not listed(elsewhere, granted=False)
    finally:
        catchup._unlock(holder)
        thread.join(15)
    catchup._unlock(waiter)
    assert not listed(here, granted=True) and not listed(here, granted=False)
    for conn in (holder, waiter, here, elsewhere):
        conn.close()
