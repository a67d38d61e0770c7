"""The worker against real PostgreSQL and RabbitMQ: exactly once through kills and outages."""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest

from events.pool import Pool
from events.store import EventStore
from events.webhook import parse_webhook
from tests.conftest import (
    ROOT,
    feed_channel,
    project_all,
    projected_up_to_head,
    sql,
    start_web,
    start_worker,
    wait_for,
)
from tests.netutil import Blackhole, TcpProxy

pytestmark = pytest.mark.services


def _upsert(instance: str, key_id: str, chat: int = 0, ts: int = 1764460800) -> bytes:
    return json.dumps(
        {
            "event": "messages.upsert",
            "instance": instance,
            "data": {
                "key": {
                    "id": key_id,
                    "remoteJid": f"5511{chat:08d}@s.whatsapp.net",
                    "fromMe": False,
                },
                "pushName": "Ana",
                "message": {"conversation": f"hello {key_id}"},
                "messageTimestamp": ts,
            },
        }
    ).encode()


def _append(url: str, bodies: list[bytes]) -> None:
    store = EventStore(Pool(url, size=1))
    for start in range(0, len(bodies), 1000):
        store.append([parse_webhook(b) for b in bodies[start : start + 1000]])


def _snapshot(url: str) -> tuple[object, ...]:
    return (
        sql(url, "SELECT instance, key_id, data FROM messages ORDER BY 1, 2"),
        sql(url, "SELECT instance, chat_jid, data FROM chats ORDER BY 1, 2"),
        sql(url, "SELECT count(*), max(cursor) FROM feed"),
    )


def _assert_each_message_once(url: str, instance: str, expected: int) -> None:
    assert sql(url, "SELECT count(*) FROM messages WHERE instance = %s", (instance,)) == [
        (expected,)
    ]
    created = sql(
        url,
        "SELECT key, count(*) FROM feed WHERE instance = %s"
        " AND kind = 'message.created' GROUP BY key",
        (instance,),
    )
    assert len(created) == expected and {n for _, n in created} == {1}
    cursors = [
        c
        for (c,) in sql(
            url, "SELECT cursor FROM feed WHERE instance = %s ORDER BY cursor", (instance,)
        )
    ]
    assert cursors == list(range(1, len(cursors) + 1)), "feed cursors must have no gap"


def test_a_worker_sigkilled_mid_batch_resumes_and_projects_every_message_once(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    instance = "kill"
    total = 30_000
    _append(
        url, [_upsert(instance, f"K{i:06d}", chat=i % 300, ts=1764460800 + i) for i in range(total)]
    )
    # given: a worker projecting a large backlog
    worker = start_worker(url)
    try:
        wait_for(
            lambda: sql(url, "SELECT position FROM checkpoints")[0][0] > 0,
            timeout=60,
            interval=0.01,
        )
        # when: it is SIGKILLed in the middle
        worker.kill()
        checkpoint = sql(url, "SELECT position FROM checkpoints")[0][0]
        assert 0 < checkpoint < total, "the kill must land mid-way through the backlog"
        # then: a new worker resumes from the checkpoint and every message lands once
        worker = start_worker(url)
        wait_for(lambda: projected_up_to_head(url), timeout=120)
    finally:
        worker.stop()
    _assert_each_message_once(url, instance, total)


def test_two_workers_on_one_burst_project_every_message_once_without_feed_gaps(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    workers = [start_worker(url), start_worker(url)]
    web = start_web(url)
    try:
        # when: messages for three instances, then their read receipts, arrive concurrently,
        # waking both workers (batches of receipts alone write no new rows a unique key guards)
        keys = [(f"pair{i % 3}", f"P{i:04d}") for i in range(600)]
        for bodies in (
            [_upsert(instance, key_id, chat=i % 7) for i, (instance, key_id) in enumerate(keys)],
            [_read(instance, key_id) for instance, key_id in keys],
        ):
            with ThreadPoolExecutor(8) as pool:
                assert {a.status for a in pool.map(web.post_webhook, bodies)} == {200}
        wait_for(lambda: projected_up_to_head(url), timeout=30)
        # both were alive and beating (a killed worker of an earlier test may still show)
        beating = json.loads(_cli(url, "status", "--json").stdout)["workers"]
        mains = {worker.process.pid for worker in workers}
        assert {_parent(w["pid"]) for w in beating} >= mains
    finally:
        web.stop()
        for worker in workers:
            worker.stop()
    # then: one writer at a time: every message and every change once, cursors without a gap
    for instance in ("pair0", "pair1", "pair2"):
        _assert_each_message_once(url, instance, 200)
    assert sql(url, "SELECT DISTINCT data->>'status' FROM messages") == [("read",)]
    assert (
        sql(
            url,
            "SELECT key, count(*) FROM feed WHERE kind = 'message.updated' GROUP BY key"
            " HAVING count(*) <> 1",
        )
        == []
    )


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def _read(instance: str, key_id: str) -> bytes:
    return json.dumps(
        {
            "event": "messages.update",
            "instance": instance,
            "data": {"keyId": key_id, "status": "READ"},
        }
    ).encode()


def test_reapplying_projected_events_changes_nothing(fresh_database_url: str) -> None:
    """A redelivered batch (here: the checkpoint moved back to 0) is a no-op."""
    url = fresh_database_url
    bodies = [_upsert("again", f"A{i}", chat=i % 5) for i in range(300)]
    bodies += [
        json.dumps(
            {
                "event": "messages.update",
                "instance": "again",
                "data": {"keyId": f"A{i}", "status": "READ"},
            }
        ).encode()
        for i in range(0, 300, 3)
    ]
    _append(url, bodies)
    conn = psycopg2.connect(url)
    try:
        assert project_all(conn, url) == len(bodies)
        before = _snapshot(url)
        sql(url, "UPDATE checkpoints SET txid = 0, position = 0")
        assert project_all(conn, url) == len(bodies)
    finally:
        conn.close()
    assert _snapshot(url) == before


def test_the_same_wake_up_delivered_twice_changes_nothing(fresh_database_url: str) -> None:
    from dramatiq import Message

    from pipeline.actors import project_messages
    from pipeline.broker import broker

    url = fresh_database_url
    _append(url, [_upsert("twice", f"T{i}") for i in range(50)])
    worker = start_worker(url)
    try:
        wait_for(lambda: projected_up_to_head(url))
        before = _snapshot(url)
        message = project_messages.message()
        copy = Message(**{**message.asdict(), "message_id": message.message_id})
        broker.enqueue(message)
        broker.enqueue(copy)
        wait_for(lambda: broker.get_queue_message_counts("projections")[0] == 0)
        time.sleep(0.5)
        assert _snapshot(url) == before
    finally:
        worker.stop()


def test_with_no_worker_running_at_most_one_wake_up_waits_in_the_queue(
    fresh_database_url: str,
) -> None:
    from pipeline.broker import broker

    url = fresh_database_url
    broker.flush("projections")
    web = start_web(url)
    worker = None
    try:
        # when: 30 webhooks commit one after another while no worker consumes
        answers = [web.post_webhook(_upsert("idle", f"I{i}")).status for i in range(30)]
        time.sleep(1.0)
        # then: one doorbell waits, not one per commit
        assert answers == [200] * 30
        assert broker.get_queue_message_counts("projections")[0] == 1
        # and a worker that starts takes it and projects everything
        worker = start_worker(url)
        wait_for(lambda: projected_up_to_head(url))
        wait_for(lambda: broker.get_queue_message_counts("projections")[0] == 0)
    finally:
        if worker is not None:
            worker.stop()
        web.stop()
    _assert_each_message_once(url, "idle", 30)


def test_with_rabbitmq_unreachable_webhooks_get_200_and_messages_still_appear(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    hole = Blackhole()
    # given: a web service whose broker accepts connections and never answers
    web = start_web(url, RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{hole.port}/%2F")
    worker = start_worker(url)
    try:
        # once the worker's start-up catch-up is over,
        assert web.post_webhook(_upsert("nobroker", "N0")).status == 200
        wait_for(lambda: projected_up_to_head(url), timeout=20)
        time.sleep(0.5)
        # when: webhooks arrive
        answers = [web.post_webhook(_upsert("nobroker", f"N{i}")) for i in range(1, 40)]
        # then: each is accepted, and the worker's own polling projects them all
        assert {a.status for a in answers} == {200}
        wait_for(lambda: projected_up_to_head(url), timeout=20)
    finally:
        worker.stop()
        web.stop()
        hole.close()
    _assert_each_message_once(url, "nobroker", 40)


def test_a_broker_outage_loses_no_message_and_wake_ups_resume_after_it(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    proxy = TcpProxy(5672)
    vhost = os.environ.get("RABBITMQ_URL", "/%2F").rsplit("/", 1)[1]  # the suite's (conftest)
    broker_url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}"
    web = start_web(url, RABBITMQ_URL=broker_url)
    worker = start_worker(url, RABBITMQ_URL=broker_url)
    try:
        assert web.post_webhook(_upsert("outage", "before")).status == 200
        wait_for(lambda: projected_up_to_head(url))
        # when: RabbitMQ goes away for a while, and comes back
        proxy.cut()
        during = [web.post_webhook(_upsert("outage", f"D{i}")).status for i in range(20)]
        proxy = proxy.restore()
        after = [web.post_webhook(_upsert("outage", f"A{i}")).status for i in range(20)]
        # then: every webhook was accepted and every message projected once
        assert set(during) == set(after) == {200}
        wait_for(lambda: projected_up_to_head(url), timeout=30)
        assert worker.process.poll() is None, "the worker must survive a broker outage"
    finally:
        worker.stop()
        web.stop()
        proxy.cut()
    _assert_each_message_once(url, "outage", 41)


def test_a_late_committing_append_is_still_projected(fresh_database_url: str) -> None:
    url = fresh_database_url
    worker = start_worker(url)
    web = start_web(url)
    slow = psycopg2.connect(url)
    try:
        # given: a transaction holding an early position, not yet committed
        with slow.cursor() as cur:
            body = parse_webhook(_upsert("late", "EARLY"))
            cur.execute(
                "INSERT INTO events (instance, type, dedupe_key, payload)"
                " VALUES (%s, %s, %s, %s::jsonb)",
                (body.instance, body.type, body.dedupe_key, body.payload_json),
            )
        # when: many later webhooks commit and are projected around it
        with ThreadPoolExecutor(8) as pool:
            statuses = list(
                pool.map(
                    lambda i: web.post_webhook(_upsert("late", f"L{i}", chat=i % 7)).status,
                    range(200),
                )
            )
        assert set(statuses) == {200}
        time.sleep(1)
        slow.commit()
        # then: the early one is projected too, and nothing twice
        wait_for(lambda: projected_up_to_head(url), timeout=20)
    finally:
        slow.close()
        web.stop()
        worker.stop()
    _assert_each_message_once(url, "late", 201)


LONG_JID = base64.b32encode(random.Random(9).randbytes(1900)).decode() + "@s.whatsapp.net"
POISONS = {
    "no key": b'{"event": "messages.upsert", "instance": "poison", "data": {"key": {}}}',
    # stored fine, but its messages row would not fit an index row: every batch would fail
    "a chat JID of 3,000 random characters": json.dumps(
        {
            "event": "messages.upsert",
            "instance": "poison",
            "data": {"key": {"id": "P9", "remoteJid": LONG_JID}, "message": {"conversation": "x"}},
        }
    ).encode(),
}


@pytest.mark.parametrize("kind", sorted(POISONS))
def test_a_poison_event_is_parked_and_later_events_still_project(
    fresh_database_url: str, kind: str
) -> None:
    url = fresh_database_url
    _append(url, [_upsert("poison", "P1"), POISONS[kind], _upsert("poison", "P2")])
    conn = psycopg2.connect(url)
    try:
        project_all(conn, url)
    finally:
        conn.close()
    [(position, error, attempts)] = sql(url, "SELECT position, error, attempts FROM parked")
    assert "ValueError" in error and attempts == 1
    assert sql(url, "SELECT key_id FROM messages ORDER BY 1") == [("P1",), ("P2",)]
    status = _cli(url, "status", "--json")
    assert json.loads(status.stdout)["projections"][0]["parked"] == 1
    # a retry that still fails keeps it parked, counting the attempt
    retried = _cli(url, "replay", "--projection", "messages", "--parked")
    assert retried.returncode == 0 and "parked 1" in retried.stdout
    # and the operator is told which event and why
    assert f"warning: parked event (position={position}, error=ValueError" in retried.stderr
    assert sql(url, "SELECT position, attempts FROM parked") == [(position, 2)]


def test_projected_changes_reach_redis_on_this_databases_channel(fresh_database_url: str) -> None:
    url = fresh_database_url
    worker = start_worker(url)
    try:
        with feed_channel(url, "fan") as read:
            _append(url, [_upsert("fan", "F1")])
            # well before a wait for a pooled connection would give up (10 s)
            published = read('"F1"', 8)
    finally:
        worker.stop()
    assert '"type":"message.created"' in published and '"F1"' in published


def test_status_counts_the_updates_held_for_a_message_that_has_not_arrived(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    update = {"keyId": "NEVER", "remoteJid": "5511@s.whatsapp.net", "status": "READ"}
    held = json.dumps({"event": "messages.update", "instance": "held", "data": update})
    _append(url, [held.encode(), _upsert("held", "H1")])
    conn = psycopg2.connect(url)
    try:
        project_all(conn, url)
    finally:
        conn.close()
    [projection] = json.loads(_cli(url, "status", "--json").stdout)["projections"]
    assert projection["held"] == 1 and projection["held_oldest_seconds"] >= 0
    assert "parked 0, held 1 (oldest" in _cli(url, "status").stdout


def test_replaying_an_already_projected_range_changes_nothing(fresh_database_url: str) -> None:
    url = fresh_database_url
    _append(url, [_upsert("replay", f"R{i}", chat=i % 3) for i in range(100)])
    conn = psycopg2.connect(url)
    try:
        project_all(conn, url)
    finally:
        conn.close()
    before = _snapshot(url)
    dry = _cli(url, "replay", "--projection", "messages", "--from", "1", "--dry-run")
    real = _cli(url, "replay", "--projection", "messages", "--from", "1", "--to", "100")
    assert dry.returncode == real.returncode == 0
    assert "would change: none" in dry.stdout and "changed: none" in real.stdout
    assert _snapshot(url) == before


def test_status_shows_lag_zero_after_a_burst(fresh_database_url: str) -> None:
    url = fresh_database_url
    worker = start_worker(url)
    web = start_web(url)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: web.post_webhook(_upsert("burst", f"B{i}")), range(300)))
        wait_for(lambda: projected_up_to_head(url), timeout=20)
        report = json.loads(_cli(url, "status", "--json").stdout)
        text = _cli(url, "status").stdout
    finally:
        web.stop()
        worker.stop()
    [projection] = report["projections"]
    assert projection["lag_events"] == 0 and projection["lag_seconds"] == 0
    assert report["queues"]["projections"] is not None
    # the text names each worker by the id /metrics labels it with
    assert report["workers"] and all(w["id"] in text for w in report["workers"])


def test_sigterm_stops_the_worker_cleanly_and_promptly(fresh_database_url: str) -> None:
    url = fresh_database_url
    backlog = 40_000  # seconds of catch-up on any machine
    _append(url, [_upsert("term", f"S{i}") for i in range(backlog)])
    worker = start_worker(url)
    wait_for(
        lambda: sql(url, "SELECT position FROM checkpoints")[0][0] > 0, timeout=60, interval=0.01
    )
    started = time.monotonic()
    code = worker.stop(timeout=30)
    elapsed = time.monotonic() - started
    assert code == 0, f"exit code {code} after {elapsed:.1f} s"
    # it stopped at the batch it was in, not after working off the backlog
    [(reached,)] = sql(url, "SELECT position FROM checkpoints")
    assert reached < backlog, f"projected all {backlog} events before exiting"
    # whatever was committed is whole; a new worker finishes the rest
    worker = start_worker(url)
    try:
        wait_for(lambda: projected_up_to_head(url), timeout=60)
    finally:
        worker.stop()
    _assert_each_message_once(url, "term", backlog)


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "DATABASE_URL": url},
    )


def _unique() -> str:
    return uuid.uuid4().hex[:8]


def test_a_database_outage_loses_no_accepted_webhook_and_both_services_recover(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    # given: web and worker reaching PostgreSQL through a proxy we can cut, as a restart or a
    # failover of the database cuts every connection
    proxy = TcpProxy(5432)
    through = url.replace(":5432/", f":{proxy.port}/")
    web = start_web(through)
    worker = start_worker(through)
    answers: dict[str, int] = {}

    def post(key: str) -> int:
        return web.post_webhook(_upsert("dbdown", key, chat=len(key) % 5)).status

    try:
        assert post("before") == 200
        wait_for(lambda: projected_up_to_head(url), timeout=20)
        # when: webhooks keep arriving before, during and after 3 s without the database
        for phase, seconds in (("up", 2.0), ("down", 3.0), ("back", 3.0)):
            if phase == "down":
                proxy.cut()
            elif phase == "back":
                proxy = proxy.restore()
            until = time.monotonic() + seconds
            for n in range(1000):
                if time.monotonic() > until:
                    break
                answers[f"{phase}{n}"] = post(f"{phase}{n}")
                time.sleep(0.01)
        # then: each answer was a 200 or a 503 (retry later), never a 500
        assert set(answers.values()) <= {200, 503}, sorted(set(answers.values()))
        assert {answers[k] for k in answers if k.startswith("down")} == {503}
        # the web is ready again, and the retry of each refused webhook is accepted
        wait_for(lambda: web.request("GET", "/health/ready").status == 200, timeout=30)
        assert {post(key) for key, status in answers.items() if status == 503} == {200}
        # the worker survived, caught up, and still projects what comes after
        assert post("after") == 200
        wait_for(lambda: projected_up_to_head(url), timeout=30)
        assert worker.process.poll() is None, "the worker must survive a database outage"
    finally:
        worker.stop()
        web.stop()
        proxy.cut()
    _assert_each_message_once(url, "dbdown", len(answers) + 2)
