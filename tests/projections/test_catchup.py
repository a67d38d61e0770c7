"""Overlapped catch-up: planning the next batch while the previous one commits changes nothing."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from events.pool import Pool
from events.store import EventStore
from events.webhook import parse_webhook
from projections import catchup, runner
from projections.tables import PROJECTION
from tests.conftest import (
    drop_database,
    fixture_bodies,
    new_database,
    project_all,
    sql,
    wait_for,
)

pytestmark = pytest.mark.services

INSTANCE = "overlap"
LOCK = runner.lock_id(PROJECTION)
# Each batch's commit waits this long after its rows are written, so the next batch is always
# planned while they are still uncommitted.
SLOW_COMMIT = """
    CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END $$;
    CREATE TRIGGER slow_commit BEFORE UPDATE ON checkpoints
        FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""


def _body(event: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"event": event, "instance": INSTANCE, "data": data}).encode()


def _upsert(key_id: str, chat: int, ts: int, message: dict[str, Any] | None = None) -> bytes:
    key = {"id": key_id, "remoteJid": f"5511{chat:08d}@s.whatsapp.net", "fromMe": ts % 7 == 0}
    content = message or {"conversation": f"hello {key_id}"}
    return _body(
        "messages.upsert",
        {"key": key, "pushName": f"P{chat}", "message": content, "messageTimestamp": ts},
    )


def _status(key_id: str, status: str) -> bytes:
    return _body("messages.update", {"keyId": key_id, "status": status})


def _reaction(key_id: str, chat: int, ts: int, emoji: str) -> bytes:
    jid = f"5511{chat:08d}@s.whatsapp.net"
    return _upsert(
        f"R{key_id}{ts}",
        chat,
        ts,
        {"reactionMessage": {"key": {"id": key_id, "remoteJid": jid}, "text": emoji}},
    )


def _removal_in_group(key_id: str, member: int, ts: int) -> bytes:
    """A group member removes a reaction they never made: only the message's bookkeeping
    changes, not the message."""
    key = {
        "id": f"X{key_id}{member}",
        "remoteJid": "120363000000000001@g.us",
        "participant": f"55119{member:07d}@s.whatsapp.net",
        "fromMe": False,
    }
    reaction = {"reactionMessage": {"key": {"id": key_id}, "text": ""}}
    return _body("messages.upsert", {"key": key, "message": reaction, "messageTimestamp": ts})


def _history() -> list[bytes]:
    """Every fixture, then messages whose statuses, reactions and images span batch borders."""
    bodies = list(fixture_bodies().values())
    image = {"imageMessage": {"mimetype": "image/jpeg", "fileLength": "10", "caption": "pic"}}
    # An image whose next events change only its bookkeeping, whatever the batch borders:
    # compared with the stored row (media id merged), they reach the feed as no change.
    bodies.append(_upsert("IMG", 9, 1764460700, image))
    bodies += [_removal_in_group("IMG", member, 1764460701 + member) for member in range(3)]
    for i in range(40):
        ts = 1764460800 + i
        bodies.append(_status(f"M{i + 2}", "READ"))  # before its message: held
        bodies.append(_upsert(f"M{i}", i % 4, ts, image if i % 5 == 0 else None))
        bodies.append(_status(f"M{i - 1}", "DELIVERY_ACK"))
        bodies.append(_reaction(f"M{i - 2}", (i - 2) % 4, ts, "👍" if i % 3 else ""))
    return bodies


def _load(url: str, bodies: list[bytes]) -> None:
    pool = Pool(url, size=1)
    EventStore(pool).append([parse_webhook(b) for b in bodies])
    pool.close()


def _everything(url: str) -> list[list[tuple[Any, ...]]]:
    return [
        sql(url, "SELECT instance, key_id, data, meta, position FROM messages ORDER BY 1, 2"),
        sql(url, "SELECT instance, key_id, meta, held FROM message_holds ORDER BY 1, 2"),
        sql(url, "SELECT instance, chat_jid, data, meta FROM chats ORDER BY 1, 2"),
        sql(url, "SELECT instance, key_id, status, mimetype FROM media ORDER BY 1, 2"),
        sql(url, "SELECT instance, cursor, kind, key, data FROM feed ORDER BY 1, 2"),
        sql(url, "SELECT position, error FROM parked ORDER BY 1"),
        sql(url, "SELECT position FROM checkpoints"),
    ]


@pytest.fixture
def two_databases() -> Iterator[tuple[str, str]]:
    first, second = new_database(), new_database()
    try:
        for url in (first, second):
            _load(url, _history())
        yield first, second
    finally:
        drop_database(first)
        drop_database(second)


def test_overlapped_batches_project_exactly_what_one_batch_after_another_does(
    two_databases: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    overlapped, serial = two_databases
    monkeypatch.setattr(runner, "BATCH_SIZE", 3)
    monkeypatch.setattr(catchup, "HOLD_SECONDS", 0.2)
    sql(overlapped, SLOW_COMMIT)
    # given: the same events in two databases, projected three at a time
    writer, planner = psycopg2.connect(overlapped), psycopg2.connect(overlapped)
    committed: list[int] = []
    # when: one is planned ahead of each uncommitted batch, while another session keeps
    # asking for the projection's lock (as media updates do), the other batch after batch
    with _lock_turns(overlapped) as turns:
        projected = catchup.catch_up(
            writer, planner, after_commit=lambda batch: committed.append(batch.events)
        )
    conn = psycopg2.connect(serial)
    project_all(conn, serial)
    for c in (writer, planner, conn):
        c.close()
    # then: every table, the feed and the checkpoint are identical
    total = len(_history())
    assert projected == sum(committed) == total
    assert len(committed) >= total // 3 // 2, "many batches"
    # (the first batch runs on one connection: a backlog is known only once it comes back full)
    mid_way = [position for position in turns if runner.BATCH_SIZE < position < total]
    assert len(mid_way) >= 2, f"overlapped runs let the other session in mid-way: {turns}"
    assert _everything(overlapped) == _everything(serial)
    held = {
        k
        for (k,) in sql(
            overlapped, "SELECT key_id FROM message_holds WHERE instance = %s", (INSTANCE,)
        )
    }
    assert held == {"M-2", "M-1", "M40", "M41"}, "only updates whose message never came are held"
    assert sql(overlapped, "SELECT count(*) FROM media")[0][0] > 5


@contextlib.contextmanager
def _lock_turns(url: str) -> Iterator[list[int]]:
    """Another session that takes the projection's lock again and again (at most 100 times,
    waiting up to 20 s each) until the block ends; yields the checkpoint position it saw on
    each turn."""
    turns: list[int] = []
    done = threading.Event()
    conn = psycopg2.connect(url)

    def take_turns() -> None:
        while not done.is_set() and len(turns) < 100:
            with conn, conn.cursor() as cur:
                cur.execute("SET LOCAL lock_timeout = '20s'")
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
                cur.execute("SELECT position FROM checkpoints")
                turns.append(cur.fetchone()[0])
            done.wait(0.05)

    thread = threading.Thread(target=take_turns)
    thread.start()
    try:
        yield turns
    finally:
        done.set()
        thread.join(30)
        conn.close()


def test_a_second_runner_is_busy_while_an_overlapped_run_holds_the_projection(
    two_databases: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = two_databases
    monkeypatch.setattr(runner, "BATCH_SIZE", 3)
    writer, planner, other = (psycopg2.connect(url) for _ in range(3))
    catchup._lock(writer, wait=True)
    try:
        # while one run holds the lock, another runner cannot take a batch
        with pytest.raises(runner.Busy):
            runner.run_batch(other, wait=False)
    finally:
        catchup._unlock(writer)
    assert wait_for(lambda: runner.run_batch(other, limit=3, wait=False).events)
    for c in (writer, planner, other):
        c.close()


def test_a_batch_whose_checkpoint_cannot_move_leaves_no_rows_and_resuming_matches(
    two_databases: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    interrupted, reference = two_databases
    monkeypatch.setattr(runner, "BATCH_SIZE", 3)
    stop_at = len(_history()) // 2
    # given: the checkpoint refuses to move past the middle of the log, after the batch's
    # rows and feed were written in the same transaction
    sql(
        interrupted,
        "CREATE FUNCTION refuse_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN IF NEW.position > {stop_at} THEN RAISE EXCEPTION 'refused'; END IF;"
        " RETURN NEW; END $$; CREATE TRIGGER refuse_checkpoint BEFORE UPDATE ON checkpoints"
        " FOR EACH ROW EXECUTE FUNCTION refuse_checkpoint()",
    )
    writer, planner = psycopg2.connect(interrupted), psycopg2.connect(interrupted)
    with pytest.raises(psycopg2.errors.RaiseException):
        project_all(writer, interrupted, planner)
    # then: what is stored is exactly what the same batches up to the checkpoint store
    [(reached,)] = sql(interrupted, "SELECT position FROM checkpoints")
    assert 0 < reached <= stop_at
    other = psycopg2.connect(reference)
    wait_for(lambda: runner.run_batch(other, limit=3).cursor.position >= reached)
    assert _everything(interrupted) == _everything(reference)
    # and once the checkpoint can move, resuming ends where an uninterrupted run ends
    sql(interrupted, "DROP TRIGGER refuse_checkpoint ON checkpoints")
    project_all(writer, interrupted, planner)
    project_all(other, reference)
    # (the rolled-back batch used up media ids: identities are not transactional)
    assert _without_media_ids(interrupted) == _without_media_ids(reference)
    for c in (writer, planner, other):
        c.close()


def _without_media_ids(url: str) -> list[list[tuple[Any, ...]]]:
    def strip(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            {**v, "media": {**v["media"], "id": None}}
            if isinstance(v, dict) and v.get("media")
            else v
            for v in row
        )

    return [[strip(row) for row in rows] for rows in _everything(url)]


@pytest.mark.parametrize("overlapped", [False, True])
def test_an_event_whose_rows_the_database_refuses_is_parked_and_the_rest_project(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch, overlapped: bool
) -> None:
    url = fresh_database_url
    monkeypatch.setattr(runner, "BATCH_SIZE", 3)
    # given: a database that refuses one message's row, as it refuses a value out of range
    sql(
        url,
        "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'refused' USING ERRCODE = 'invalid_parameter_value'; END $$;"
        " CREATE TRIGGER refuse_bad BEFORE INSERT ON messages FOR EACH ROW"
        " WHEN (NEW.key_id = 'BAD') EXECUTE FUNCTION refuse_bad()",
    )
    keys = [f"K{n}" for n in range(5)] + ["BAD"] + [f"K{n}" for n in range(5, 12)]
    _load(url, [_upsert(key, n % 4, 1764460800 + n) for n, key in enumerate(keys)])
    conn, planner = psycopg2.connect(url), psycopg2.connect(url)
    try:
        # when: the projection catches up, a batch at a time or overlapped
        project_all(conn, url, planner if overlapped else None)
    finally:
        conn.close()
        planner.close()
    # then: that event alone is parked, with the database's reason, and every other projected
    [(position, error)] = sql(url, "SELECT position, error FROM parked")
    assert position == keys.index("BAD") + 1 and "refused" in error
    assert sql(url, "SELECT key_id FROM messages ORDER BY position") == [
        (key,) for key in keys if key != "BAD"
    ]
    cursors = [c for (c,) in sql(url, "SELECT cursor FROM feed ORDER BY cursor")]
    assert cursors == list(range(1, len(cursors) + 1))
