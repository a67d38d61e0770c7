"""The event store against real PostgreSQL: idempotent appends, immutability, gap-safe reads."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest

from events.pool import Pool
from events.store import Cursor, EventStore, read_after
from events.webhook import Webhook, parse_webhook
from migrations.runner import applied_version, available, head, migrate
from tests.conftest import BASE_URL, drop_database, sql

pytestmark = pytest.mark.services


def _webhook(key_id: str, instance: str = "store-test") -> Webhook:
    body = {
        "event": "messages.upsert",
        "instance": instance,
        "data": {"key": {"id": key_id}, "message": {"conversation": key_id}},
    }
    return parse_webhook(json.dumps(body).encode())


@pytest.fixture
def store(fresh_database_url: str) -> EventStore:
    return EventStore(Pool(fresh_database_url, size=16))


def test_commits_are_durable_even_where_the_database_defaults_to_asynchronous_commit(
    fresh_database_url: str,
) -> None:
    name = fresh_database_url.rsplit("/", 1)[1]
    sql(BASE_URL.rstrip("/") + "/postgres", f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    pool = Pool(fresh_database_url, size=1)
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SHOW synchronous_commit")
        assert cur.fetchone()[0] == "on"
    pool.close()


def test_a_redelivery_returns_the_first_position_and_stores_nothing(store: EventStore) -> None:
    [first] = store.append([_webhook("A")])
    [again] = store.append([_webhook("A")])
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.position == first.position
    assert store.head() == first.position


def test_a_batch_answers_in_order_and_collapses_copies_within_it(store: EventStore) -> None:
    answers = store.append([_webhook("A"), _webhook("B"), _webhook("A"), _webhook("C")])
    assert [a.duplicate for a in answers] == [False, False, True, False]
    assert answers[2].position == answers[0].position
    assert answers[0].position < answers[1].position < answers[3].position


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET type = 'x'",
        "UPDATE events SET type = 'x' WHERE false",
        "DELETE FROM events",
        "TRUNCATE events",
    ],
)
def test_the_database_refuses_to_change_stored_events(
    store: EventStore, fresh_database_url: str, statement: str
) -> None:
    store.append([_webhook("A")])
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        sql(fresh_database_url, statement)
    assert sql(fresh_database_url, "SELECT count(*) FROM events") == [(1,)]


def test_the_same_media_arriving_twice_is_stored_once(
    store: EventStore, fresh_database_url: str
) -> None:
    import base64
    import hashlib
    import os

    blob = os.urandom(200_000)
    bodies = [
        {
            "event": "messages.upsert",
            "instance": "m",
            "data": {
                "key": {"id": key},
                "message": {
                    "imageMessage": {"mimetype": "image/png"},
                    "base64": base64.b64encode(blob).decode(),
                },
            },
        }
        for key in ("A", "B")
    ]
    store.append([parse_webhook(json.dumps(b).encode()) for b in bodies])

    rows = sql(fresh_database_url, "SELECT sha256, size, mimetype, length(data) FROM attachments")
    assert rows == [(hashlib.sha256(blob).hexdigest(), len(blob), "image/png", len(blob))]
    sizes = sql(fresh_database_url, "SELECT pg_column_size(payload) FROM events")
    assert all(size < 2_000 for (size,) in sizes)


def test_a_reader_never_skips_an_event_whose_transaction_commits_late(
    fresh_database_url: str,
) -> None:
    """Many appenders commit while an earlier-positioned transaction stays open for seconds."""
    store = EventStore(Pool(fresh_database_url, size=16))
    # given: a transaction holding an early position that commits 2 s later
    slow = psycopg2.connect(fresh_database_url)
    with slow.cursor() as cur:
        cur.execute(
            "INSERT INTO events (instance, type, dedupe_key, payload)"
            " VALUES ('gap', 'late', 'late-one', '{}') RETURNING position"
        )
        late_position = cur.fetchone()[0]
    seen: list[tuple[Cursor, int]] = []
    expected = 1 + 8 * 40
    stop = threading.Event()

    def read_forever() -> None:
        cursor = Cursor()
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            for next_cursor, event in store.read_after(cursor, limit=7):
                seen.append((next_cursor, event.position))
                cursor = next_cursor
            time.sleep(0.005)

    def append_many(worker: int) -> None:
        for i in range(40):
            store.append([_webhook(f"w{worker}-{i}")])

    reader = threading.Thread(target=read_forever)
    reader.start()
    # when: eight appenders commit 320 later events while the early one is still open
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(append_many, range(8)))
    committed_after = sql(fresh_database_url, "SELECT count(*) FROM events")[0][0]
    time.sleep(2)
    slow.commit()
    slow.close()
    deadline = time.monotonic() + 20
    while len(seen) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    reader.join()

    # then: the race really happened, and the reader saw every event exactly once, in order
    assert committed_after == expected - 1, "later events must commit before the early one"
    positions = [position for _, position in seen]
    assert len(positions) == expected, f"saw {len(positions)} of {expected} events"
    assert sorted(positions) == sorted(set(positions)) and len(positions) == expected
    assert late_position in positions
    cursors = [cursor for cursor, _ in seen]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)


@pytest.mark.parametrize(
    "txids",
    [
        [9, 9, 9, 10, 10, 10],  # transaction 10 after 9 (as text, "10" sorts first)
        [10, 9, 11, 9, 12],  # positions are handed out in a different order than commits
    ],
)
def test_reads_follow_transaction_ids_as_numbers_then_positions(
    store: EventStore, fresh_database_url: str, txids: list[int]
) -> None:
    # given: events written by these transactions, long finished, at positions 1, 2, ...
    for position, txid in enumerate(txids, start=1):
        sql(
            fresh_database_url,
            "INSERT INTO events (txid, instance, type, dedupe_key, payload)"
            " VALUES (%s::text::xid8, 'digits', 'messages.upsert', %s, '{}')",
            (str(txid), f"digits-{position}"),
        )
    # when: a reader walks the log two events at a time
    cursor, seen = Cursor(), []
    for _ in range(10):
        read = store.read_after(cursor, limit=2)
        seen += [(c.txid, event.position) for c, event in read]
        cursor = read[-1][0] if read else cursor
    # then: every event once, by transaction, then position
    assert seen == sorted((txid, position) for position, txid in enumerate(txids, start=1))


def test_a_read_returns_the_stored_body_exactly_and_leaves_the_callers_cursor_as_it_was(
    store: EventStore, fresh_database_url: str
) -> None:
    # given: a body with text beyond ASCII, a number beyond 64 bits and a 19-digit string
    body = {
        "event": "messages.upsert",
        "instance": "exact",
        "data": {"key": {"id": "Ação-é-😀"}, "n": 2**70, "neg": -(2**63) - 1, "s": "1" * 19},
    }
    store.append([parse_webhook(json.dumps(body).encode())])
    conn = psycopg2.connect(fresh_database_url)
    try:
        with conn, conn.cursor() as cur:
            # when: it is read in the caller's transaction
            [(_, event)] = read_after(cur, Cursor(), 10)
            # then: it reads back equal, as str and int, and the cursor still reads as before
            assert (event.instance, event.type, event.payload) == ("exact", "messages.upsert", body)
            assert isinstance(event.payload["data"]["n"], int)
            cur.execute("SELECT 'é'::text, '{\"a\": 1}'::jsonb")
            assert cur.fetchone() == ("é", {"a": 1})
    finally:
        conn.close()


def test_a_connection_in_another_client_encoding_reads_the_same_body(
    store: EventStore, fresh_database_url: str
) -> None:
    body = {"event": "messages.upsert", "instance": "latin", "data": {"text": "ação é"}}
    store.append([parse_webhook(json.dumps(body).encode())])
    conn = psycopg2.connect(fresh_database_url, client_encoding="LATIN1")
    try:
        with conn, conn.cursor() as cur:
            [(_, event)] = read_after(cur, Cursor(), 10)
        assert (event.instance, event.payload) == ("latin", body)
    finally:
        conn.close()


def test_concurrent_migrations_apply_each_file_once() -> None:
    url = BASE_URL.rstrip("/") + "/zapline_test_migrate_race"
    drop_database(url)
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: migrate(url, log=lambda _: None), range(4)))
        assert sorted(len(r) for r in results) == [0, 0, 0, len(available())]
        conn = psycopg2.connect(url)
        assert applied_version(conn) == head()
        conn.close()
        assert migrate(url, log=lambda _: None) == []
    finally:
        drop_database(url)


def test_a_large_attachment_is_stored_in_chunks_once_and_reads_back_whole(
    store: EventStore, fresh_database_url: str
) -> None:
    import base64
    import hashlib
    import os

    from events.store import find_attachment, read_attachment

    blob = os.urandom(2 * 1024 * 1024 + 7)
    bodies = [
        json.dumps(
            {
                "event": "messages.upsert",
                "instance": "m",
                "data": {
                    "key": {"id": key},
                    "message": {
                        "videoMessage": {"mimetype": "video/mp4"},
                        "base64": base64.b64encode(blob).decode(),
                    },
                },
            }
        ).encode()
        for key in ("A", "B")
    ]
    for body in bodies:  # in two transactions: the second finds the chunks already there
        store.append([parse_webhook(body)])
    digest = hashlib.sha256(blob).hexdigest()
    assert sql(fresh_database_url, "SELECT data IS NULL FROM attachments") == [(True,)]
    assert sql(fresh_database_url, "SELECT count(*) FROM attachment_chunks") == [(3,)]
    conn = psycopg2.connect(fresh_database_url)
    try:
        with conn.cursor() as cur:
            found = find_attachment(cur, digest)
            assert found is not None and found.size == len(blob)
            assert b"".join(read_attachment(cur, found)) == blob
    finally:
        conn.close()
