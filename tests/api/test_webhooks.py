"""POST /webhooks/evolution through a real gunicorn process and real PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import jwt
import psycopg2
import pytest

from events.webhook import parse_webhook
from tests.conftest import (
    JWT_SECRET,
    WEBHOOK_TOKEN,
    WebServer,
    fixture_bodies,
    sql,
    start_web,
    wait_for,
    with_instance,
)
from tests.netutil import TcpProxy

pytestmark = pytest.mark.services


def _count(url: str, instance: str) -> int:
    return sql(url, "SELECT count(*) FROM events WHERE instance = %s", (instance,))[0][0]


def _text_message(instance: str, key_id: str) -> bytes:
    return json.dumps(
        {
            "event": "messages.upsert",
            "instance": instance,
            "data": {
                "key": {"id": key_id, "remoteJid": "5511@s.whatsapp.net", "fromMe": False},
                "message": {"conversation": "hi"},
                "messageTimestamp": 1764460800,
            },
        }
    ).encode()


def test_every_fixture_is_stored_once_and_reposting_stores_nothing(
    web: WebServer, database_url: str
) -> None:
    instance = "fx-" + uuid.uuid4().hex[:8]
    bodies = [with_instance(body, instance) for body in fixture_bodies().values()]

    first = [web.post_webhook(body) for body in bodies]
    again = [web.post_webhook(body) for body in bodies]

    assert [r.status for r in first + again] == [200] * (2 * len(bodies))
    assert not any(r.json()["duplicate"] for r in first)
    assert all(r.json()["duplicate"] for r in again)
    assert [r.json()["position"] for r in again] == [r.json()["position"] for r in first]
    assert _count(database_url, instance) == len(bodies)


def test_a_redelivery_with_new_envelope_fields_is_a_duplicate(
    web: WebServer, database_url: str
) -> None:
    instance = "env-" + uuid.uuid4().hex[:8]
    body = json.loads(
        with_instance(fixture_bodies()["messages.upsert__conversation__1.json"], instance)
    )
    first = web.post_webhook(json.dumps(body).encode()).json()
    body.update(date_time="2030-01-01T00:00:00.000Z", destination="https://elsewhere/x")
    again = web.post_webhook(json.dumps(body).encode()).json()
    assert again == {"position": first["position"], "duplicate": True}
    assert _count(database_url, instance) == 1


def test_a_message_id_too_long_for_an_index_row_is_stored_once(
    web: WebServer, database_url: str
) -> None:
    instance = "long-id-" + uuid.uuid4().hex[:8]
    body = json.loads(_text_message(instance, "L"))
    body["data"]["key"]["id"] = base64.b64encode(random.Random(8).randbytes(2400)).decode()
    first = web.post_webhook(json.dumps(body).encode())
    again = web.post_webhook(json.dumps(body).encode())
    assert (first.status, again.status) == (200, 200)
    assert again.json() == {"position": first.json()["position"], "duplicate": True}
    assert _count(database_url, instance) == 1


def test_concurrent_redeliveries_of_one_webhook_store_it_once(
    web: WebServer, database_url: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    instance = "race-" + uuid.uuid4().hex[:8]
    body = _text_message(instance, "SAME")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: web.post_webhook(body), range(32)))
    assert {a.status for a in answers} == {200}
    assert len({a.json()["position"] for a in answers}) == 1
    assert sum(not a.json()["duplicate"] for a in answers) == 1
    assert _count(database_url, instance) == 1


@pytest.mark.parametrize("how", ["bearer", "header", "query", "jwt", "suffix-path"])
def test_each_accepted_credential_form_stores_the_webhook(
    web: WebServer, database_url: str, how: str
) -> None:
    instance = f"auth-{how}-" + uuid.uuid4().hex[:6]
    body = _text_message(instance, "K1")
    token = jwt.encode(
        {
            "exp": int(time.time()) + 600,
            "iat": int(time.time()),
            "app": "evolution",
            "action": "webhook",
        },
        JWT_SECRET,
        algorithm="HS256",
    )
    path, headers = {
        "bearer": ("/webhooks/evolution", {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}),
        "header": ("/webhooks/evolution", {"X-Webhook-Token": WEBHOOK_TOKEN}),
        "query": (f"/webhooks/evolution?token={WEBHOOK_TOKEN}", {}),
        "jwt": ("/webhooks/evolution", {"Authorization": f"Bearer {token}"}),
        "suffix-path": (
            "/webhooks/evolution/messages-upsert",
            {"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
        ),
    }[how]
    assert web.post_webhook(body, path, headers).status == 200
    assert _count(database_url, instance) == 1


@pytest.mark.parametrize(
    "how",
    [
        "none",
        "wrong-bearer",
        "wrong-header",
        "wrong-query",
        "expired-jwt",
        "jwt-wrong-secret",
        "jwt-none-alg",
    ],
)
def test_missing_or_wrong_credentials_get_401_and_store_nothing(
    web: WebServer, database_url: str, how: str
) -> None:
    instance = f"noauth-{how}-" + uuid.uuid4().hex[:6]
    now = int(time.time())
    expired = jwt.encode({"exp": now - 120, "iat": now - 720}, JWT_SECRET, algorithm="HS256")
    wrong = jwt.encode(
        {"exp": now + 600}, "another-secret-of-a-proper-length-32b", algorithm="HS256"
    )
    unsigned = jwt.encode({"exp": now + 600}, None, algorithm="none")
    path, headers = {
        "none": ("/webhooks/evolution", {}),
        "wrong-bearer": ("/webhooks/evolution", {"Authorization": "Bearer nope"}),
        "wrong-header": ("/webhooks/evolution", {"X-Webhook-Token": WEBHOOK_TOKEN + "x"}),
        "wrong-query": ("/webhooks/evolution?token=nope", {}),
        "expired-jwt": ("/webhooks/evolution", {"Authorization": f"Bearer {expired}"}),
        "jwt-wrong-secret": ("/webhooks/evolution", {"Authorization": f"Bearer {wrong}"}),
        "jwt-none-alg": ("/webhooks/evolution", {"Authorization": f"Bearer {unsigned}"}),
    }[how]
    answer = web.post_webhook(_text_message(instance, "K1"), path, headers)
    assert answer.status == 401
    assert WEBHOOK_TOKEN not in answer.body.decode()
    assert _count(database_url, instance) == 0


def test_a_nul_in_the_url_neither_loses_an_authenticated_webhook_nor_passes_a_bad_token(
    web: WebServer, database_url: str
) -> None:
    instance = "nul-url-" + uuid.uuid4().hex[:6]
    query = web.post_webhook(_text_message(instance, "K1"), "/webhooks/evolution?x=%00")
    suffix = web.post_webhook(_text_message(instance, "K2"), "/webhooks/evolution/a%00b")
    bad_body = web.post_webhook(b"not json", "/webhooks/evolution/a%00b")
    bad_token = web.post_webhook(
        _text_message(instance, "K3"), f"/webhooks/evolution?token={WEBHOOK_TOKEN}%00", {}
    )

    assert (query.status, suffix.status, bad_body.status, bad_token.status) == (200, 200, 400, 401)
    assert _count(database_url, instance) == 2
    [(path,)] = sql(
        database_url,
        "SELECT path FROM quarantine WHERE id = %s",
        (bad_body.json()["quarantine_id"],),
    )
    assert path == "/webhooks/evolution/a\ufffdb"


def test_a_body_over_the_limit_gets_413_and_stores_nothing(
    web: WebServer, database_url: str
) -> None:
    instance = "big-" + uuid.uuid4().hex[:6]
    body = json.loads(_text_message(instance, "BIG"))
    body["data"]["message"]["conversation"] = "x" * 1_100_000  # the test server allows 1 MiB
    assert web.post_webhook(json.dumps(body).encode()).status == 413
    assert _count(database_url, instance) == 0


def test_a_body_that_is_not_a_webhook_gets_400_and_is_quarantined(
    web: WebServer, database_url: str
) -> None:
    body = b'{"not": "a webhook", "marker": "' + uuid.uuid4().hex.encode() + b'"}'
    answer = web.post_webhook(body)
    assert answer.status == 400
    quarantined = sql(
        database_url, "SELECT body FROM quarantine WHERE id = %s", (answer.json()["quarantine_id"],)
    )
    assert bytes(quarantined[0][0]) == body


def test_a_body_nested_too_deeply_gets_400_and_is_quarantined(
    web: WebServer, database_url: str
) -> None:
    body = b'{"event": "messages.upsert", "instance": "deep", "data": ' + b"[" * 100_000
    body += b"]" * 100_000 + b"}"
    answer = web.post_webhook(body)
    assert answer.status == 400
    [(kept,)] = sql(
        database_url, "SELECT body FROM quarantine WHERE id = %s", (answer.json()["quarantine_id"],)
    )
    assert bytes(kept) == body


# JSON that parses but PostgreSQL refuses: NaN and a number beyond any float (jsonb has
# neither), a NUL in the event name (a text column; a NUL in the payload becomes U+FFFD).
REFUSED_BY_THE_DATABASE = {
    "nan": b'{"event": "messages.upsert", "instance": "%s", "data": {"n": NaN}}',
    "huge number": b'{"event": "messages.upsert", "instance": "%s", "data": {"n": 1e999999}}',
    "nul in the event": b'{"event": "messages.upsert\\u0000", "instance": "%s", "data": {}}',
    # too big for an index row, even compressed
    "instance name of 3,200 random characters": b'{"event": "messages.upsert", "instance": "%s'
    + base64.b64encode(random.Random(7).randbytes(2400))
    + b'", "data": {}}',
}


@pytest.mark.parametrize("kind", sorted(REFUSED_BY_THE_DATABASE))
def test_a_body_the_database_refuses_gets_400_and_is_quarantined_not_lost(
    web: WebServer, database_url: str, kind: str
) -> None:
    instance = "refused-" + uuid.uuid4().hex[:6]
    body = REFUSED_BY_THE_DATABASE[kind] % instance.encode()
    # while good webhooks are committed alongside it, in the same batches
    with ThreadPoolExecutor(8) as pool:
        good = [pool.submit(web.post_webhook, _text_message(instance, f"G{i}")) for i in range(16)]
        answer = web.post_webhook(body)
        assert all(f.result().status == 200 for f in good)
    assert answer.status == 400
    quarantined = sql(
        database_url,
        "SELECT body, reason FROM quarantine WHERE id = %s",
        (answer.json()["quarantine_id"],),
    )
    assert bytes(quarantined[0][0]) == body and quarantined[0][1]
    assert _count(database_url, instance) == 16


def test_a_fault_of_our_schema_gets_503_for_a_retry_not_a_400_that_drops_it(
    fresh_database_url: str,
) -> None:
    # given: a database whose events table is not what the code expects
    url = fresh_database_url
    sql(url, "ALTER TABLE events RENAME COLUMN payload TO payload_renamed")
    server = start_web(url)
    try:
        answer = server.post_webhook(_text_message("schema", "S1"))
    finally:
        server.stop()
    # then: the sender is told to retry, nothing is quarantined, and no SQL reaches the body
    assert answer.status == 503 and int(answer.headers["retry-after"]) > 0
    assert answer.json() == {"error": "database unavailable, retry later"}
    assert sql(url, "SELECT count(*) FROM quarantine") == [(0,)]


# Refuses, at COMMIT, any transaction holding an event of the instance "commitfail".
REFUSE_COMMITFAIL_AT_COMMIT = """
    CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$;
    CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON events
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.instance = 'commitfail')
        EXECUTE FUNCTION refuse_at_commit();
"""


def test_a_commit_that_fails_answers_no_200_and_the_good_webhooks_go_in_on_a_retry(
    fresh_database_url: str,
) -> None:
    # given: a database that refuses, at COMMIT, any transaction holding a "commitfail" event
    url = fresh_database_url
    sql(url, REFUSE_COMMITFAIL_AT_COMMIT)
    server = start_web(url)
    try:
        bodies = [_text_message("commitfail" if i % 5 == 0 else "good", f"C{i}") for i in range(40)]
        # when: they arrive together, so the group committer puts several in one transaction
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(server.post_webhook, bodies))
        # then: a 200 only for an event that is committed, at the position it names
        ok = {i: a.json()["position"] for i, a in enumerate(answers) if a.status == 200}
        stored = dict(sql(url, "SELECT position, instance FROM events"))
        # (on a busy machine every batch may hold a refused one, and no answer is a 200)
        assert all(stored.get(position) == "good" for position in ok.values())
        assert all(answers[i].status == 503 for i in range(0, 40, 5))
        # and every good webhook not yet stored goes in when the sender retries, once each
        for i, body in enumerate(bodies):
            if i % 5 and i not in ok:
                assert server.post_webhook(body).status == 200
        assert sql(url, "SELECT count(*), count(DISTINCT dedupe_key) FROM events") == [(32, 32)]
    finally:
        server.stop()


def test_an_inline_media_whose_event_fails_at_commit_leaves_no_attachment_behind(
    fresh_database_url: str,
) -> None:
    """The attachment split out of a webhook commits with its event or not at all."""
    # given: a database that refuses, at COMMIT, any transaction holding a "commitfail" event
    url = fresh_database_url
    sql(url, REFUSE_COMMITFAIL_AT_COMMIT)
    refused, kept = b"refused media " * 64, b"kept media " * 64
    server = start_web(url)
    try:
        # when: a webhook with inline media is refused at commit, and another one is not
        failed = server.post_webhook(_image_message("commitfail", "M1", refused))
        stored = server.post_webhook(_image_message("good", "M2", kept))
    finally:
        server.stop()
    # then: the refused one got a 5xx and left no attachment; the other kept its own
    assert failed.status >= 500 and stored.status == 200
    assert _attachments(url, refused) == 0 and _attachments(url, kept) == 1
    assert sql(url, "SELECT instance FROM events") == [("good",)]


def _image_message(instance: str, key_id: str, blob: bytes) -> bytes:
    return json.dumps(
        {
            "event": "messages.upsert",
            "instance": instance,
            "data": {
                "key": {"id": key_id, "remoteJid": "5511@s.whatsapp.net", "fromMe": False},
                "message": {
                    "imageMessage": {"mimetype": "image/png"},
                    "base64": base64.b64encode(blob).decode(),
                },
                "messageTimestamp": 1764460800,
            },
        }
    ).encode()


def _attachments(url: str, blob: bytes) -> int:
    digest = hashlib.sha256(blob).hexdigest()
    return sql(url, "SELECT count(*) FROM attachments WHERE sha256 = %s", (digest,))[0][0]


def test_a_reference_in_the_body_cannot_point_a_message_at_another_instances_blob(
    web: WebServer, database_url: str
) -> None:
    """Only ingest writes a reference at `base64`: a sender's could name any stored blob."""
    # given: instance A's inline media, stored under its sha256
    owner, other = "ref-a-" + uuid.uuid4().hex[:8], "ref-b-" + uuid.uuid4().hex[:8]
    blob = b"<html>A's file</html>" + uuid.uuid4().bytes
    assert web.post_webhook(_image_message(owner, "A1", blob)).status == 200
    # when: instance B sends a message whose `base64` is a reference to A's blob
    body = json.loads(_image_message(other, "B1", b""))
    reference = {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob), "mimetype": None}
    body["data"]["message"]["base64"] = reference
    assert web.post_webhook(json.dumps(body).encode()).status == 200
    # then: B's event keeps no reference, so its media is never read from A's bytes
    stored = sql(
        database_url,
        "SELECT payload->'data'->'message'->'base64' FROM events WHERE instance = %s",
        (other,),
    )
    assert stored == [(None,)]


def test_a_webhook_waiting_on_a_database_lock_leaves_the_process_serving_others(
    fresh_database_url: str,
) -> None:
    """gevent only switches greenlets at a blocking database call if psycopg2 is patched to
    wait through gevent; unpatched, one waiting query stalls the whole web process."""
    url = fresh_database_url
    server = start_web(url)  # one web process
    body = _text_message("green", "G1")
    blocker = psycopg2.connect(url)
    try:
        # given: another transaction holds the webhook's dedupe key, uncommitted
        with blocker.cursor() as cur:
            cur.execute(
                "INSERT INTO events (instance, type, dedupe_key, payload)"
                " VALUES ('green', 'messages.upsert', %s, '{}')",
                (parse_webhook(body).dedupe_key,),
            )
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(server.post_webhook, body)
            wait_for(
                lambda: (
                    sql(
                        url,
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE wait_event_type = 'Lock' AND query LIKE '%%INSERT INTO events%%'",
                    )[0][0]
                    == 1
                ),
                timeout=10,
            )
            # then: while that append waits in PostgreSQL, the process answers other requests
            assert server.request("GET", "/health", timeout=5).status == 200
            other = server.post_webhook(_text_message("green", "G2"))
            assert other.status == 200 and not waiting.done()
            # and once the other transaction gives the key up, the waiting webhook is stored
            blocker.rollback()
            assert waiting.result(timeout=10).json()["duplicate"] is False
        assert _count(url, "green") == 2
    finally:
        blocker.close()
        server.stop()


def test_the_database_going_away_gives_503_with_retry_after_then_recovers(
    database_url: str,
) -> None:
    # given: a web service whose database connection runs through a proxy we can cut
    proxy = TcpProxy(5432)
    proxied_url = database_url.replace(":5432/", f":{proxy.port}/")
    server = start_web(proxied_url)
    instance = "dbdown-" + uuid.uuid4().hex[:6]
    try:
        assert server.post_webhook(_text_message(instance, "before")).status == 200
        # when: the database is unreachable
        proxy.cut()
        down = server.post_webhook(_text_message(instance, "during"))
        # then: 503 with Retry-After, and once it is back the same webhook is stored once
        assert down.status == 503
        assert int(down.headers["retry-after"]) > 0
        proxy = proxy.restore()
        retried = server.post_webhook(_text_message(instance, "during"))
        assert retried.status == 200
        assert _count(database_url, instance) == 2
    finally:
        server.stop()
        proxy.cut()


def test_every_request_is_logged_as_one_json_line_without_secrets(database_url: str) -> None:
    api_token, admin_token = "api-" + uuid.uuid4().hex, "admin-" + uuid.uuid4().hex
    server = start_web(
        database_url,
        capture_output=True,
        API_TOKENS=f"{api_token}:*",
        ADMIN_TOKEN=admin_token,
    )
    try:
        instance = "log-" + uuid.uuid4().hex[:6]
        server.post_webhook(
            _text_message(instance, "L1"), f"/webhooks/evolution?token={WEBHOOK_TOKEN}", {}
        )
        # every place a secret travels: query, bearer headers, a JWT, a WebSocket's query
        now = int(time.time())
        signed = jwt.encode(
            {"exp": now + 600, "iat": now, "app": "evolution", "action": "webhook"},
            JWT_SECRET,
            algorithm="HS256",
        )
        server.post_webhook(
            _text_message(instance, "L2"), headers={"Authorization": f"Bearer {signed}"}
        )
        bearer = {"Authorization": f"Bearer {api_token}"}
        server.request("GET", f"/api/instances/{instance}/chats", headers=bearer)
        server.request("GET", f"/ws?instance={instance}&token={api_token}")
        server.request(
            "GET", "/admin/projections", headers={"Authorization": f"Bearer {admin_token}"}
        )
    finally:
        server.stop()
    assert server.process.stdout is not None
    output = server.process.stdout.read().decode()  # stdout and stderr
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    posts = [line for line in lines if line.get("method") == "POST"]
    assert len(posts) == 2 and {p["status"] for p in posts} == {200} and posts[0]["request_id"]
    assert posts[0]["path"] == "/webhooks/evolution"
    for secret in (WEBHOOK_TOKEN, JWT_SECRET, signed, api_token, admin_token):
        assert secret not in output
