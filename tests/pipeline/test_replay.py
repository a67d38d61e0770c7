"""Replay filters select exactly the events they name; --parked retries and clears."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import pytest

from events.pool import Pool
from events.store import EventStore
from events.webhook import parse_webhook
from projections.catchup import catch_up
from projections.replay import Selection, count, replay
from tests.conftest import sql

pytestmark = pytest.mark.services

JID_A = "5511000000001@s.whatsapp.net"
JID_B = "5511000000002@s.whatsapp.net"


def _body(event: str, instance: str, data: Any) -> bytes:
    return json.dumps({"event": event, "instance": instance, "data": data}).encode()


def _upsert(instance: str, key_id: str, jid: str) -> bytes:
    return _body(
        "messages.upsert",
        instance,
        {
            "key": {"id": key_id, "remoteJid": jid, "fromMe": False},
            "message": {"conversation": key_id},
            "messageTimestamp": 1764460800,
        },
    )


@pytest.fixture
def log(fresh_database_url: str) -> str:
    """Events of two instances and two chats, of several types, received at known times."""
    url = fresh_database_url
    bodies = [
        _upsert("i1", "A1", JID_A),
        _upsert("i1", "B1", JID_B),
        _body("messages.update", "i1", {"keyId": "A1", "remoteJid": JID_A, "status": "READ"}),
        _body("chats.upsert", "i1", [{"remoteJid": JID_B, "name": "Bea"}]),
        _upsert("i2", "A2", JID_A),
        _body("presence.update", "i1", {"id": JID_A, "presences": {}}),
    ]
    store = EventStore(Pool(url, size=1))
    for body in bodies:  # one transaction each, so received_at differs
        store.append([parse_webhook(body)])
    return url


def _selected(url: str, selection: Selection) -> list[tuple[str, str]]:
    conn = psycopg2.connect(url)
    try:
        assert count(conn, selection) == replay(conn, selection, dry_run=True).events
        from projections.replay import _where

        where, params = _where(selection)
        with conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT instance, type FROM events e WHERE {where} ORDER BY position", params
            )
            return cur.fetchall()
    finally:
        conn.close()


def test_type_selects_only_events_of_those_types(log: str) -> None:
    assert _selected(log, Selection(types=("messages.update", "chats.upsert"))) == [
        ("i1", "messages.update"),
        ("i1", "chats.upsert"),
    ]


def test_chat_selects_messages_statuses_and_chat_events_that_name_it(log: str) -> None:
    assert _selected(log, Selection(chat=JID_B)) == [
        ("i1", "messages.upsert"),
        ("i1", "chats.upsert"),
    ]
    assert _selected(log, Selection(chat=JID_A, instance="i1")) == [
        ("i1", "messages.upsert"),
        ("i1", "messages.update"),
    ]


def test_since_is_inclusive_and_until_exclusive_on_received_at(log: str) -> None:
    times = [t for (t,) in sql(log, "SELECT received_at FROM events ORDER BY position")]
    assert _selected(log, Selection(since=times[2], until=times[4])) == [
        ("i1", "messages.update"),
        ("i1", "chats.upsert"),
    ]
    later = times[-1] + timedelta(seconds=1)
    assert _selected(log, Selection(since=later)) == []
    assert len(_selected(log, Selection(until=datetime.now(UTC) + timedelta(days=1)))) == 6


def test_filters_combine(log: str) -> None:
    assert _selected(log, Selection(instance="i2", types=("messages.upsert",), chat=JID_A)) == [
        ("i2", "messages.upsert")
    ]
    assert _selected(log, Selection(instance="i2", types=("messages.update",))) == []


def test_replay_of_a_chat_restores_only_that_chats_messages(log: str) -> None:
    conn = psycopg2.connect(log)
    try:
        catch_up(conn)
        sql(log, "DELETE FROM messages")
        result = replay(conn, Selection(chat=JID_A, instance="i1"))
    finally:
        conn.close()
    assert result.events == 2
    assert sql(log, "SELECT instance, key_id, data->>'status' FROM messages") == [
        ("i1", "A1", "read")
    ]


def test_parked_retries_the_parked_events_and_clears_those_that_now_apply(log: str) -> None:
    conn = psycopg2.connect(log)
    try:
        catch_up(conn)
        # given: two events parked (as if an older projection failed on them)
        positions = [p for (p,) in sql(log, "SELECT position FROM events ORDER BY position")]
        for position in positions[:2]:
            sql(
                log,
                "INSERT INTO parked (projection, position, error) VALUES"
                " ('messages', %s, 'ValueError: old bug')",
                (position,),
            )
        sql(log, "DELETE FROM messages")
        # when: replaying --parked
        result = replay(conn, Selection(parked_only=True))
    finally:
        conn.close()
    # then: exactly those two were applied and left the parked list
    assert (result.events, result.unparked) == (2, 2)
    assert sql(log, "SELECT count(*) FROM parked") == [(0,)]
    assert sql(log, "SELECT key_id FROM messages ORDER BY 1") == [("A1",), ("B1",)]


def test_the_cli_takes_the_filters(log: str) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "replay",
            "--projection",
            "messages",
            "--type",
            "messages.upsert",
            "--instance",
            "i1",
            "--since",
            "2000-01-01T00:00:00Z",
            "--until",
            "2999-01-01",
            "--chat",
            JID_A,
            "--dry-run",
        ],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=60,
        env={**os.environ, "DATABASE_URL": log},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("replayed 1 events")
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "replay",
            "--projection",
            "messages",
            "--since",
            "yesterday",
        ],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=60,
        env={**os.environ, "DATABASE_URL": log},
    )
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr


def test_a_replay_without_to_stops_at_the_head_it_started_from(fresh_database_url: str) -> None:
    import os
    import subprocess
    import sys
    import threading

    from tests.conftest import ROOT

    url = fresh_database_url
    store = EventStore(Pool(url, size=1))
    store.append([parse_webhook(_upsert("i1", f"OLD{n}", JID_A)) for n in range(3000)])
    # given: events arriving all the time the replay runs
    stop = threading.Event()

    def keep_appending() -> None:
        for batch in range(300):  # at most 30,000 events
            if stop.is_set():
                return
            store.append(
                [parse_webhook(_upsert("i1", f"NEW{batch}-{n}", JID_A)) for n in range(100)]
            )

    appender = threading.Thread(target=keep_appending)
    appender.start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "replay", "--projection", "messages"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=120,
            env={**os.environ, "DATABASE_URL": url},
        )
    finally:
        stop.set()
        appender.join(timeout=60)
    # then: it replayed what it counted at its start, and ended
    assert done.returncode == 0, done.stderr
    replayed = int(done.stdout.split()[1])
    last_progress = done.stderr.strip().splitlines()[-1]  # "replay: N/N (...)"
    counted = int(last_progress.split()[1].split("/")[1])
    assert 3000 <= replayed == counted


def test_an_event_the_database_refuses_stays_parked_and_the_rest_replay(log: str) -> None:
    url = log
    conn = psycopg2.connect(url)
    try:
        catch_up(conn)
        # given: the database now refuses one message's row (as it would a value out of range)
        sql(url, "ALTER TABLE messages ADD CONSTRAINT no_b1 CHECK (key_id <> 'B1') NOT VALID")
        sql(url, "DELETE FROM messages")
        # when: everything is replayed
        result = replay(conn, Selection(first=1))
    finally:
        conn.close()
    # then: that event is parked with the reason, and every other message is back
    [(position,)] = sql(
        url, "SELECT position FROM events WHERE payload->'data'->'key'->>'id' = 'B1'"
    )
    assert result.parked == [position] and result.events == 6
    [(error,)] = sql(url, "SELECT error FROM parked WHERE position = %s", (position,))
    assert "no_b1" in error
    assert sql(url, "SELECT key_id FROM messages ORDER BY 1") == [("A1",), ("A2",)]
