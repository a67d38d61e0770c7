"""Zero-downtime rebuilds against real PostgreSQL, web and worker processes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest

from events.pool import Pool
from events.store import EventStore
from events.webhook import parse_webhook
from projections import rebuild
from projections.catchup import catch_up
from projections.runner import lock_id
from tests.conftest import (
    ROOT,
    drop_database,
    new_database,
    projected_up_to_head,
    sql,
    start_web,
    start_worker,
    wait_for,
)
from tests.netutil import TcpProxy

pytestmark = pytest.mark.services

ADMIN = "rebuild-admin-token"
API = "rebuild-api-token"
CHAT = "551100000007@s.whatsapp.net"


def _upsert(instance: str, key_id: str, chat: int, ts: int) -> bytes:
    return json.dumps(
        {
            "event": "messages.upsert",
            "instance": instance,
            "data": {
                "key": {
                    "id": key_id,
                    "remoteJid": f"5511{chat:08d}@s.whatsapp.net",
                    "fromMe": chat % 4 == 0 and ts % 3 == 0,
                },
                "pushName": f"P{chat}",
                "message": {"conversation": f"hello {key_id}"},
                "messageTimestamp": ts,
            },
        }
    ).encode()


def _status(instance: str, key_id: str, status: str) -> bytes:
    return json.dumps(
        {
            "event": "messages.update",
            "instance": instance,
            "data": {"keyId": key_id, "status": status},
        }
    ).encode()


def _history(count: int) -> list[bytes]:
    """Messages over 2 instances and 40 chats, with statuses, some before their message."""
    bodies = []
    for i in range(count):
        instance = f"rb{i % 2}"
        if i % 5 == 4:
            bodies.append(_status(instance, f"M{i + 3}", "READ"))  # arrives early: held
        else:
            bodies.append(_upsert(instance, f"M{i}", chat=i % 40, ts=1764460800 + i))
    return bodies


def _append(url: str, bodies: list[bytes]) -> None:
    pool = Pool(url, size=1)
    store = EventStore(pool)
    for start in range(0, len(bodies), 1000):
        store.append([parse_webhook(b) for b in bodies[start : start + 1000]])
    pool.close()


def _cli(url: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "DATABASE_URL": url},
        **kwargs,
    )


def _run(url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "DATABASE_URL": url},
    )


def _projection(url: str) -> tuple[list[Any], list[Any], list[Any]]:
    return (
        sql(url, "SELECT instance, key_id, data FROM messages ORDER BY 1, 2"),
        sql(url, "SELECT instance, chat_jid, data FROM chats ORDER BY 1, 2"),
        sql(url, "SELECT instance, key_id, held FROM message_holds ORDER BY 1, 2"),
    )


def _fresh_projection_of(url: str) -> tuple[list[Any], list[Any], list[Any]]:
    """Project the same events (same positions and transaction ids) into a new database."""
    other = new_database()
    try:
        source, target = psycopg2.connect(url), psycopg2.connect(other)
        columns = "(position, txid, instance, type, dedupe_key, payload, received_at)"
        data = io.StringIO()
        with source, source.cursor() as cur:
            cur.copy_expert(f"COPY events {columns} TO STDOUT", data)
        data.seek(0)
        with target, target.cursor() as cur:
            cur.copy_expert(f"COPY events {columns} FROM STDIN", data)
        catch_up(target)
        source.close()
        target.close()
        return _projection(other)
    finally:
        drop_database(other)


@pytest.fixture
def history(fresh_database_url: str) -> Iterator[str]:
    """A database with 6,000 projected events."""
    url = fresh_database_url
    _append(url, _history(6000))
    conn = psycopg2.connect(url)
    catch_up(conn)
    conn.close()
    yield url


class Load:
    """Webhooks posted and reads made from threads until stopped, every answer checked."""

    def __init__(self, web: Any) -> None:
        self.web = web
        self.errors: list[str] = []
        self.fewer: list[str] = []
        self.backwards: list[str] = []
        self.reads = 0
        self.posted = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._post, daemon=True),
            threading.Thread(target=self._read_messages, daemon=True),
            threading.Thread(target=self._read_feed, daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _get(self, path: str) -> Any:
        answer = self.web.request("GET", path, headers={"Authorization": f"Bearer {API}"})
        self.reads += 1
        if answer.status != 200:
            self.errors.append(f"{path}: {answer.status} {answer.body[:200]!r}")
            return None
        return answer.json()

    def _post(self) -> None:
        n = 0
        while not self._stop.is_set() and n < 5000:
            answer = self.web.post_webhook(_upsert("rb1", f"LIVE{n}", chat=7, ts=1800000000 + n))
            if answer.status != 200:
                self.errors.append(f"webhook: {answer.status}")
            n += 1
            self.posted = n
            time.sleep(0.01)

    def _read_messages(self) -> None:
        seen = 0
        while not self._stop.is_set():
            page = self._get(f"/api/instances/rb1/chats/{CHAT}/messages?limit=500")
            chats = self._get("/api/instances/rb1/chats?limit=500")
            if page is None or chats is None:
                continue
            count = len(page["items"])
            if count < seen:
                self.fewer.append(f"{count} < {seen}")
            seen = max(seen, count)

    def _read_feed(self) -> None:
        after = 0
        while not self._stop.is_set():
            page = self._get(f"/api/instances/rb1/feed?after={after}&limit=1000")
            if page is None:
                continue
            if page.get("reset"):
                self.backwards.append(f"reset after {after}")
                continue
            cursors = [item["cursor"] for item in page["items"]]
            if cursors != sorted(set(cursors)) or (cursors and cursors[0] <= after):
                self.backwards.append(f"after {after}: {cursors[:5]}")
            after = cursors[-1] if cursors else after
            time.sleep(0.005)


def test_a_rebuild_under_read_and_write_load_is_invisible_to_readers_and_equals_a_fresh_projection(
    history: str,
) -> None:
    url = history
    # given: a live projection that has drifted (one message lost, one corrupted) ...
    sql(url, "DELETE FROM messages WHERE instance = 'rb1' AND key_id = 'M7'")
    sql(
        url,
        "UPDATE messages SET data = jsonb_set(data, '{text}', '\"wrong\"')"
        " WHERE instance = 'rb1' AND key_id = 'M47'",
    )
    worker = start_worker(url)
    web = start_web(url, API_TOKENS=f"{API}:*", ADMIN_TOKEN=ADMIN)
    load = Load(web)
    try:
        # ... serving reads and taking webhooks throughout
        load.start()
        wait_for(lambda: load.reads > 20 and load.posted > 20, timeout=30)
        feed_head_before = sql(url, "SELECT cursor FROM feed_heads WHERE instance = 'rb1'")[0][0]
        # when: it is rebuilt in small batches, so the build overlaps the load
        done = _run(url, "rebuild", "messages", "--batch", "300")
        time.sleep(1.0)
        load.stop()
        assert done.returncode == 0, done.stderr
        wait_for(lambda: projected_up_to_head(url), timeout=30)
    finally:
        load.stop()
        web.stop()
        worker.stop()
    # then: no read failed, never fewer messages, no cursor went back or reset
    assert load.errors == [] and load.fewer == [] and load.backwards == []
    assert load.reads > 50 and load.posted > 50
    assert "messages: 1 added, 0 removed, 1 changed" in done.stdout
    # the rebuilt projection is exactly a fresh projection of the same events
    assert _projection(url) == _fresh_projection_of(url)
    # and the feed got only the two differences, after the head it had, never a replay
    repaired = sql(
        url,
        "SELECT key, kind FROM feed WHERE instance = 'rb1' AND cursor > %s"
        " AND key IN ('M7', 'M47') ORDER BY cursor",
        (feed_head_before,),
    )
    assert repaired == [("M7", "message.created"), ("M47", "message.updated")]
    doubled = sql(
        url,
        "SELECT key FROM feed WHERE kind = 'message.created' AND key <> 'M7'"
        " GROUP BY instance, key HAVING count(*) > 1",
    )
    assert doubled == []
    tables = sql(url, "SELECT tablename FROM pg_tables WHERE tablename LIKE '%%rebuild%%'")
    assert tables == [("rebuilds",)], "the shadow tables became the live ones"
    indexes = {name for (name,) in sql(url, "SELECT indexname FROM pg_indexes")}
    assert {"messages_pkey", "messages_by_chat", "chats_by_activity"} <= indexes


def test_an_interrupted_rebuild_resumes_from_its_shadow_checkpoint(history: str) -> None:
    url = history
    # given: a rebuild SIGKILLed part-way through its shadow build
    first = _cli(url, "rebuild", "messages", "--batch", "50", start_new_session=True)
    try:
        wait_for(
            lambda: (sql(url, "SELECT events_done FROM rebuilds") or [(0,)])[0][0] >= 1000,
            timeout=60,
            interval=0.01,
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    [(done, started)] = sql(url, "SELECT events_done, started_at FROM rebuilds")
    assert 1000 <= done < 6000
    status = json.loads(_run(url, "status", "--json").stdout)
    assert status["projections"][0]["rebuild"]["state"] == "interrupted"
    # when: it is run again
    again = _run(url, "rebuild", "messages")
    # then: it went on from where it stopped (same start) and finished with a correct result
    assert again.returncode == 0, again.stderr
    [(state, total_done, started_again)] = sql(
        url, "SELECT state, events_done, started_at FROM rebuilds"
    )
    assert (state, started_again) == ("done", started)
    assert total_done == 6000
    assert _projection(url) == _fresh_projection_of(url)


def test_a_dry_run_prints_the_differences_and_changes_nothing(history: str) -> None:
    url = history
    sql(url, "DELETE FROM messages WHERE instance = 'rb0' AND key_id = 'M0'")
    # A row in the wrong place changes what readers see though its data does not differ.
    sql(url, "UPDATE messages SET sent_at = sent_at - interval '1 year' WHERE key_id = 'M1'")
    sql(url, "UPDATE chats SET last_message_at = NULL WHERE chat_jid = %s", (CHAT,))
    before = (_projection(url), sql(url, "SELECT count(*), max(cursor) FROM feed"))
    dry = _run(url, "rebuild", "messages", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "messages: 1 added, 0 removed, 1 changed" in dry.stdout
    assert "chats: 0 added, 0 removed, 1 changed" in dry.stdout
    assert (_projection(url), sql(url, "SELECT count(*), max(cursor) FROM feed")) == before
    # the shadow is kept for the real run, and --discard drops it
    assert sql(url, "SELECT state FROM rebuilds") == [("built",)]
    assert _run(url, "rebuild", "messages", "--discard").returncode == 0
    assert sql(url, "SELECT to_regclass('messages__rebuild') IS NULL") == [(True,)]


def test_a_run_resuming_a_dry_runs_shadow_reports_its_own_rate(history: str) -> None:
    url = history
    assert _run(url, "rebuild", "messages", "--dry-run").returncode == 0
    # when: the real run follows: it resumes the dry run's shadow, with nothing left to build
    real = _run(url, "rebuild", "messages")
    assert real.returncode == 0, real.stderr
    # then: no rate of its own, rather than the dry run's events over the time since it began
    report = json.loads(_run(url, "status", "--json").stdout)["projections"][0]["rebuild"]
    assert (report["state"], report["events_done"]) == ("done", 6000)
    assert report["rate_per_second"] is None


def test_a_transaction_holding_the_live_tables_for_12_s_delays_the_swap_but_does_not_fail_it(
    history: str,
) -> None:
    # An analyst's BEGIN; SELECT ... left open: the swap's renames must wait it out in short
    # tries (each holding readers up briefly), not give up after a few long ones.
    url = history
    blocker = psycopg2.connect(url)
    with blocker.cursor() as cur:
        cur.execute("SELECT count(*) FROM messages")
    timer = threading.Timer(12, blocker.rollback)
    timer.start()
    try:
        result = _run(url, "rebuild", "messages")
    finally:
        timer.join()
        blocker.close()
    assert result.returncode == 0, result.stderr
    assert sql(url, "SELECT state FROM rebuilds") == [("done",)]


def test_the_sessions_holding_the_live_tables_are_named_for_the_operator(history: str) -> None:
    blocker, looker = psycopg2.connect(history), psycopg2.connect(history)
    try:
        with blocker.cursor() as cur:
            cur.execute("SELECT count(*) FROM chats")
            cur.execute("SELECT pg_backend_pid()")
            [pid] = cur.fetchone()
        with looker.cursor() as cur:
            named = rebuild._lock_holders(cur)
    finally:
        blocker.close()
        looker.close()
    assert f"pid {pid} (idle in transaction" in named


def test_only_one_rebuild_of_a_projection_runs_at_a_time(history: str) -> None:
    url = history
    web = start_web(url, ADMIN_TOKEN=ADMIN)
    first = _cli(url, "rebuild", "messages", "--batch", "20")
    try:
        wait_for(lambda: sql(url, "SELECT count(*) FROM rebuilds WHERE events_done > 0")[0][0])
        second = _run(url, "rebuild", "messages")
        posted = web.request(
            "POST",
            "/admin/projections/messages/rebuild",
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(30)
        web.stop()
    assert second.returncode == 1
    assert "already running" in second.stderr
    assert posted.status == 409


def test_the_admin_route_has_the_worker_rebuild_and_reports_its_state(history: str) -> None:
    url = history
    sql(url, "DELETE FROM messages WHERE instance = 'rb1' AND key_id = 'M1'")
    worker = start_worker(url)
    web = start_web(url, ADMIN_TOKEN=ADMIN)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    try:
        # "chats" names the messages projection, which builds them.
        posted = web.request("POST", "/admin/projections/chats/rebuild", headers=auth)
        assert posted.status == 202, posted.body
        assert posted.json()["projection"] == "messages"

        def finished() -> Any:
            [projection] = web.request("GET", "/admin/projections", headers=auth).json()[
                "projections"
            ]
            return projection["rebuild"]["state"] == "done" and projection

        projection = wait_for(finished, timeout=60, interval=0.2)
    finally:
        web.stop()
        worker.stop()
    assert projection["rebuild"]["summary"]["messages"] == {
        "added": 1,
        "removed": 0,
        "changed": 0,
    }
    assert projection["rebuild"]["events_done"] == 6000
    assert sql(url, "SELECT count(*) FROM messages WHERE key_id = 'M1'") == [(1,)]


def test_an_event_the_database_refuses_is_parked_and_the_rebuild_completes(history: str) -> None:
    url = history
    # given: the database refuses one message's row now (shadow tables copy the constraint)
    sql(url, "ALTER TABLE messages ADD CONSTRAINT no_m7 CHECK (key_id <> 'M7') NOT VALID")
    before = sql(url, "SELECT count(*) FROM messages WHERE key_id <> 'M7'")
    # when: the projection is rebuilt
    rebuilt = _run(url, "rebuild", "messages")
    # then: it completes, with that message's event parked and every other message in place
    assert rebuilt.returncode == 0, rebuilt.stderr
    [(error,)] = sql(url, "SELECT error FROM parked WHERE projection = 'messages'")
    assert "no_m7" in error
    assert sql(url, "SELECT count(*) FROM messages") == before


def _rebuild_while_its_swap_waits(
    url: str, meanwhile: Callable[[Any], None]
) -> subprocess.CompletedProcess[str]:
    """Run a rebuild whose swap, having compared shadow and live, waits for the projection's
    lock held here until `meanwhile(cursor)` has run (autocommit) on the holding session."""
    holder = psycopg2.connect(url)
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (lock_id("messages"),))
            running = _cli(url, "rebuild", "messages")
            wait_for(
                lambda: sql(
                    url,
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                    " WHERE l.locktype = 'advisory' AND NOT l.granted"
                    " AND d.datname = current_database()",
                )[0][0],
                timeout=60,
                interval=0.01,
            )
            meanwhile(cur)
            cur.execute("SELECT pg_advisory_unlock(%s)", (lock_id("messages"),))
        out, err = running.communicate(timeout=120)
    finally:
        holder.close()
    return subprocess.CompletedProcess(running.args, running.returncode, out, err)


def test_rows_written_after_the_comparison_and_before_the_swap_are_compared_too(
    history: str,
) -> None:
    # The swap compares, under the projection's lock, only the keys an earlier comparison
    # found different and those of rows written since: a change made in between must count.
    url = history
    feed_head = sql(url, "SELECT cursor FROM feed_heads WHERE instance = 'rb1'")[0][0]

    # when: live rows change while the swap waits: one corrupted, one that no event made
    def change_live_rows(cur: Any) -> None:
        cur.execute(
            "UPDATE messages SET data = jsonb_set(data, '{text}', '\"wrong\"')"
            " WHERE instance = 'rb1' AND key_id = 'M47';"
            " INSERT INTO messages (instance, key_id, chat_jid, sent_at, data, meta, position)"
            " SELECT instance, 'STRAY', chat_jid, sent_at, data, meta, position"
            " FROM messages WHERE instance = 'rb1' AND key_id = 'M51'"
        )

    rebuilt = _rebuild_while_its_swap_waits(url, change_live_rows)
    # then: the swap saw both, and told clients about the corrected message
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "messages: 0 added, 1 removed, 1 changed" in rebuilt.stdout
    assert "(the live projection waited " in rebuilt.stdout
    assert sql(
        url, "SELECT key, kind FROM feed WHERE instance = 'rb1' AND cursor > %s", (feed_head,)
    ) == [("M47", "message.updated")]
    assert _projection(url) == _fresh_projection_of(url)


def test_a_rebuild_that_loses_its_database_says_so_in_one_line_and_resumes(history: str) -> None:
    url = history
    proxy = TcpProxy(5432)
    through = url.replace(":5432/", f":{proxy.port}/")
    # given: a rebuild part-way through its shadow build
    first = _cli(through, "rebuild", "messages", "--batch", "50")
    try:
        wait_for(
            lambda: (sql(url, "SELECT events_done FROM rebuilds") or [(0,)])[0][0] >= 1000,
            timeout=60,
            interval=0.01,
        )
        # when: the database goes away (a restart, a failover)
        proxy.cut()
        out, err = first.communicate(timeout=60)
    finally:
        proxy.cut()
        if first.poll() is None:
            first.kill()
    # then: it ends saying what happened and what to do, not with a traceback
    assert first.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        "error: server closed the connection unexpectedly;"
        " a rebuild resumes from its shadow when run again"
    )
    # and a second run resumes its shadow and finishes with a correct result
    again = _run(url, "rebuild", "messages")
    assert again.returncode == 0, again.stderr
    [(state, done)] = sql(url, "SELECT state, events_done FROM rebuilds")
    assert (state, done) == ("done", 6000)
    assert _projection(url) == _fresh_projection_of(url)


def test_a_row_only_the_shadow_writes_while_the_swap_waits_is_compared_too(history: str) -> None:
    # The swap's own last batch writes shadow rows in subtransactions (savepoints), whose ids
    # come after its own: the rows written since the comparison must include them.
    url = history
    feed_head = sql(url, "SELECT cursor FROM feed_heads WHERE instance = 'rb1'")[0][0]

    # when: an event arrives that the live projection passes over without a change (as old
    # code would), and only the swap's last batch applies it, to the shadow
    def pass_over_an_event(cur: Any) -> None:
        _append(url, [_status("rb1", "M51", "PLAYED")])
        cur.execute(
            "UPDATE checkpoints c SET txid = e.txid::text::bigint, position = e.position"
            " FROM events e WHERE c.projection = 'messages'"
            " AND e.position = (SELECT max(position) FROM events)"
        )

    rebuilt = _rebuild_while_its_swap_waits(url, pass_over_an_event)
    # then: the swap counted it and told clients
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "messages: 0 added, 0 removed, 1 changed" in rebuilt.stdout
    assert sql(
        url, "SELECT key, kind FROM feed WHERE instance = 'rb1' AND cursor > %s", (feed_head,)
    ) == [("M51", "message.updated")]
    assert sql(url, "SELECT data->>'status' FROM messages WHERE key_id = 'M51'") == [("played",)]
