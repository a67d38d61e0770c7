"""Media through real web + worker processes into the local MEDIA_DIR, with a stand-in Evolution."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from events.pool import Pool
from events.store import EventStore
from events.webhook import parse_webhook
from projections import runner
from projections.feed import FeedItem
from projections.media import record_stored
from projections.tables import PROJECTION
from tests.conftest import (
    ROOT,
    WebServer,
    Worker,
    drop_database,
    feed_channel,
    new_database,
    project_all,
    sql,
    start_web,
    start_worker,
    wait_for,
)
from tests.pipeline.stubs import Answer, EvolutionStub, image_upsert, png

pytestmark = pytest.mark.services

READER = "media-reader"  # sees every instance
TENANT = "media-tenant"  # sees only the instance "elsewhere"
FAST_RETRIES = {
    "MEDIA_MIN_BACKOFF_MS": "20",
    "MEDIA_MAX_BACKOFF_MS": "200",
    "MEDIA_MAX_ATTEMPTS": "3",
    "EVOLUTION_TIMEOUT_SECONDS": "1",
}


@dataclass
class Stack:
    url: str
    web: WebServer
    worker: Worker
    media_dir: Path
    evolution: EvolutionStub
    env: dict[str, str]

    def media_of(self, instance: str, key_id: str) -> dict[str, Any]:
        rows = sql(
            self.url,
            "SELECT id, status, mimetype, size, sha256, attempts, reason, storage_key"
            " FROM media WHERE instance = %s AND key_id = %s",
            (instance, key_id),
        )
        names = ("id", "status", "mimetype", "size", "sha256", "attempts", "reason", "key")
        return dict(zip(names, rows[0], strict=True)) if rows else {}

    def settled(self, instance: str, key_id: str, status: str = "stored") -> dict[str, Any]:
        """Wait until the media of a message is in `status`."""
        return wait_for(
            lambda: (m := self.media_of(instance, key_id)) and m["status"] == status and m,
            timeout=30,
        )

    def get_media(self, media_id: object, token: str = READER) -> Any:
        return self.web.request(
            "GET", f"/api/media/{media_id}", headers={"Authorization": f"Bearer {token}"}
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    evolution = EvolutionStub()
    url = new_database()
    media_dir = tmp_path_factory.mktemp("media")
    env = {
        "API_TOKENS": f"{READER}:*,{TENANT}:elsewhere",
        "MEDIA_DIR": str(media_dir),
        "EVOLUTION_API_URL": evolution.url,
        "EVOLUTION_API_KEY": evolution.api_key,
        **FAST_RETRIES,
    }
    web = start_web(url, **env)
    worker = start_worker(url, **env)
    yield Stack(url, web, worker, media_dir, evolution, env)
    worker.stop()
    web.stop()
    evolution.close()
    drop_database(url)


def _stored_files(media_dir: Path) -> list[Path]:
    return [p for p in media_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]


def test_inline_png_is_stored_and_served_with_the_same_sha256(stack: Stack) -> None:
    # given: a webhook carrying a real PNG inline
    image = png(64, 48, seed=1)
    assert stack.web.post_webhook(image_upsert("local", "PNG1", image)).status == 200
    # when: the worker has stored it
    media = stack.settled("local", "PNG1")
    # then: the row records the bytes, and the API serves exactly them
    digest = hashlib.sha256(image).hexdigest()
    assert (media["sha256"], media["size"], media["mimetype"]) == (digest, len(image), "image/png")
    answer = stack.get_media(media["id"])
    assert answer.status == 200
    assert answer.headers["content-type"] == "image/png"
    assert int(answer.headers["content-length"]) == len(image)
    assert hashlib.sha256(answer.body).hexdigest() == digest


@pytest.mark.parametrize(
    "key_id, mimetype, served, disposition",
    [
        ("XSS1", "text/html", "text/html", "attachment"),
        ("XSS2", "image/svg+xml", "image/svg+xml", "attachment"),
        ("XSS3", "text/plain\r\nSet-Cookie: pwn=1", "application/octet-stream", "attachment"),
        ("XSS4", "image/png", "image/png", None),
        ("XSS5", "Audio/OGG; codecs=opus", "audio/ogg", None),
    ],
)
def test_media_is_served_sandboxed_and_only_safe_types_inline(
    stack: Stack, key_id: str, mimetype: str, served: str, disposition: str | None
) -> None:
    """The sender chooses the mimetype: what a browser could run downloads, in a sandbox."""
    page = f"<html><script>fetch('/{key_id}?' + location.search)</script></html>".encode()
    stack.web.post_webhook(image_upsert("local", key_id, page, mimetype=mimetype))
    answer = stack.get_media(stack.settled("local", key_id)["id"])
    assert (answer.status, answer.body) == (200, page)
    assert answer.headers["content-type"] == served
    assert answer.headers.get("content-disposition") == disposition
    assert answer.headers["content-security-policy"] == "sandbox"


def test_a_stored_media_reaches_live_sockets_through_redis_not_only_the_feed_table(
    stack: Stack,
) -> None:
    instance = "live-media-" + uuid.uuid4().hex[:6]
    with feed_channel(stack.url, instance) as read:
        stack.web.post_webhook(image_upsert(instance, "PNGL", png(8, 8, seed=9)))
        stack.settled(instance, "PNGL")
        published = read('"status":"stored"', 10)
    assert '"status":"stored"' in published


def test_ranges_of_a_local_file_are_served_as_parts_for_players_to_seek(stack: Stack) -> None:
    image = png(64, 64, seed=7)
    stack.web.post_webhook(image_upsert("local", "PNGR", image))
    media = stack.settled("local", "PNGR")

    def get(byte_range: str) -> Any:
        return stack.web.request(
            "GET",
            f"/api/media/{media['id']}",
            headers={"Authorization": f"Bearer {READER}", "Range": byte_range},
        )

    size = len(image)
    for asked, (first, last) in {
        "bytes=0-99": (0, 99),
        "bytes=100-": (100, size - 1),
        "bytes=-10": (size - 10, size - 1),
        f"bytes=5-{size + 1000}": (5, size - 1),
    }.items():
        answer = get(asked)
        assert answer.status == 206, asked
        assert answer.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert answer.body == image[first : last + 1], asked
    assert get(f"bytes={size}-").status == 416
    assert get("bytes=-0").status == 416  # valid, but asks for no byte (RFC 9110 14.1.1)
    whole = get("pages=1-2")  # a unit we do not serve: the whole file, as without Range
    assert (whole.status, whole.body, whole.headers["accept-ranges"]) == (200, image, "bytes")


def test_storing_reaches_the_message_and_the_feed_as_message_updated(stack: Stack) -> None:
    image = png(8, 8, seed=2)
    stack.web.post_webhook(image_upsert("local", "PNG2", image))
    media = stack.settled("local", "PNG2")
    [(data,)] = sql(
        stack.url, "SELECT data FROM messages WHERE instance = 'local' AND key_id = 'PNG2'"
    )
    assert data["media"]["status"] == "stored" and data["media"]["id"] == media["id"]
    assert data["media"]["size"] == len(image)
    kinds = sql(
        stack.url,
        "SELECT kind, data->'media'->>'status' FROM feed"
        " WHERE instance = 'local' AND key = 'PNG2' ORDER BY cursor",
    )
    assert kinds == [("message.created", "pending"), ("message.updated", "stored")]


def test_storing_a_media_waits_while_a_projector_batch_holds_the_projection(
    fresh_database_url: str,
) -> None:
    """A projector batch writes back whole message rows it loaded under the projection's
    lock, so the media actor's rewrite of the message must wait for that lock too."""
    url = fresh_database_url
    # given: a projected message whose media is pending (no worker runs here)
    EventStore(Pool(url, size=1)).append([parse_webhook(image_upsert("lock", "LOCK1", None))])
    actor, batch = psycopg2.connect(url), psycopg2.connect(url)
    finished: list[list[FeedItem]] = []
    storing = threading.Thread(
        target=lambda: finished.append(
            record_stored(actor, media_id, sha256="0" * 64, size=1, mimetype=None, storage_key="k")
        )
    )
    try:
        project_all(actor, url)
        [(media_id,)] = sql(url, "SELECT id FROM media WHERE key_id = 'LOCK1'")
        # and a projector batch in progress: its transaction holds the projection's lock
        with batch.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (runner.lock_id(PROJECTION),))
        # when: the media actor records the media stored
        storing.start()
        storing.join(timeout=1.0)
        # then: it waits, and the message row still has what the batch loaded
        assert storing.is_alive() and not finished
        assert _message_media_status(url, "LOCK1") == "pending"
        # and once the batch commits, it goes on
        batch.commit()
        storing.join(timeout=10)
        assert not storing.is_alive()
    finally:
        batch.close()  # releases the lock, should an assertion have failed while held
        if storing.ident is not None:
            storing.join(timeout=10)
        actor.close()
    [items] = finished
    assert [(item.kind, item.data["media"]["status"]) for item in items] == [
        ("message.updated", "stored")
    ]
    assert _message_media_status(url, "LOCK1") == "stored"


def _message_media_status(url: str, key_id: str) -> str:
    [(status,)] = sql(
        url, "SELECT data->'media'->>'status' FROM messages WHERE key_id = %s", (key_id,)
    )
    return str(status)


def test_the_same_bytes_posted_twice_are_stored_as_one_object(stack: Stack) -> None:
    image = png(32, 32, seed=3)
    before = len(_stored_files(stack.media_dir))
    for key_id in ("SAME1", "SAME2"):
        assert stack.web.post_webhook(image_upsert("local", key_id, image)).status == 200
    first, second = stack.settled("local", "SAME1"), stack.settled("local", "SAME2")
    assert first["id"] != second["id"]
    assert first["key"] == second["key"] and first["sha256"] == second["sha256"]
    assert len(_stored_files(stack.media_dir)) == before + 1
    assert (
        sql(stack.url, "SELECT count(*) FROM attachments WHERE sha256 = %s", (first["sha256"],))[0][
            0
        ]
        == 1
    )


def test_a_large_inline_video_takes_the_chunked_path_and_reads_back_whole(stack: Stack) -> None:
    """A body over 1 MB is decoded in chunks at ingest and stored as attachment chunks."""
    blob = os.urandom(3 * 1024 * 1024 + 123)
    body = image_upsert("local", "BIG1", blob)
    assert stack.web.post_webhook(body).status == 200
    media = stack.settled("local", "BIG1")
    digest = hashlib.sha256(blob).hexdigest()
    assert media["sha256"] == digest
    assert sql(
        stack.url, "SELECT count(*) FROM attachment_chunks WHERE sha256 = %s", (digest,)
    ) == [(4,)]
    answer = stack.get_media(media["id"])
    assert hashlib.sha256(answer.body).hexdigest() == digest


def test_media_without_base64_is_fetched_from_evolution(stack: Stack) -> None:
    image = png(16, 16, seed=4)
    stack.evolution.script["EVO1"] = [Answer(201, image)]
    stack.web.post_webhook(image_upsert("local", "EVO1", None))
    media = stack.settled("local", "EVO1")
    assert media["sha256"] == hashlib.sha256(image).hexdigest()
    [asked] = [r for r in stack.evolution.requests if r["body"]["message"]["key"]["id"] == "EVO1"]
    assert asked["path"] == "/chat/getBase64FromMediaMessage/local"
    assert asked["apikey"] == stack.evolution.api_key
    assert asked["body"] == {"message": {"key": {"id": "EVO1"}}, "convertToMp4": False}
    assert (
        hashlib.sha256(stack.get_media(media["id"]).body).digest() == hashlib.sha256(image).digest()
    )


def test_a_message_evolution_no_longer_has_fails_at_once(stack: Stack) -> None:
    stack.evolution.script["GONE"] = [Answer(400)]
    stack.web.post_webhook(image_upsert("local", "GONE", None))
    media = stack.settled("local", "GONE", "failed")
    assert media["attempts"] == 1
    assert "400" in media["reason"] and "GONE" in media["reason"]


def test_transient_failures_then_recovery_end_stored(stack: Stack) -> None:
    image = png(16, 16, seed=5)
    # a 500, then a reply slower than the 1 s client timeout, then the file
    stack.evolution.script["FLAKY"] = [
        Answer(500),
        Answer(201, image, delay=1.5),
        Answer(201, image),
    ]
    stack.web.post_webhook(image_upsert("local", "FLAKY", None))
    media = stack.settled("local", "FLAKY")
    assert media["attempts"] == 3
    assert media["reason"] is None


def test_exhausted_retries_end_failed_with_the_error_and_replay_retries_them(
    stack: Stack,
) -> None:
    # given: Evolution answers 500 to every try
    stack.evolution.script["DOWN"] = [Answer(500)]
    stack.web.post_webhook(image_upsert("local", "DOWN", None))
    # then: after MEDIA_MAX_ATTEMPTS tries the row is failed with the error, counted by status
    media = stack.settled("local", "DOWN", "failed")
    assert media["attempts"] == 3
    assert "gave up after 3 attempts" in media["reason"] and "500" in media["reason"]
    status = json.loads(_cli(stack, "status", "--json").stdout)
    assert status["media"]["failed"] >= 1
    assert {"status": "failed", "reason": media["reason"], "count": 1} in status["media_reasons"]
    # and the operator reads why without opening the table
    assert f"1 failed: {media['reason']}" in _cli(stack, "status").stdout
    # when: Evolution recovers and the operator retries failed media
    stack.evolution.script["DOWN"] = [Answer(201, png(4, 4, seed=6))]
    replay = _cli(stack, "replay", "--media-failed")
    assert replay.returncode == 0, replay.stderr
    # then: it is stored
    stored = stack.settled("local", "DOWN")
    assert stored["id"] == media["id"] and stored["attempts"] == 1


def test_another_instances_token_gets_404_for_the_media(stack: Stack) -> None:
    stack.web.post_webhook(image_upsert("local", "MINE", png(4, 4, seed=7)))
    media = stack.settled("local", "MINE")
    assert stack.get_media(media["id"], token=TENANT).status == 404
    assert stack.get_media(media["id"]).status == 200
    assert stack.get_media(10**12).status == 404
    assert stack.get_media("not-a-number").status == 404
    assert stack.web.request("GET", f"/api/media/{media['id']}").status == 401


def test_media_not_stored_yet_answers_409(stack: Stack) -> None:
    stack.evolution.script["NOPE"] = [Answer(400)]
    stack.web.post_webhook(image_upsert("local", "NOPE", None))
    media = stack.settled("local", "NOPE", "failed")
    answer = stack.get_media(media["id"])
    assert answer.status == 409 and answer.json() == {"error": "media is failed"}


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        env={**os.environ, **stack.env, "DATABASE_URL": stack.url},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_stored_file_the_web_cannot_read_answers_503_in_json(stack: Stack) -> None:
    # given: a stored media whose file is not where this web process looks (as when web and
    # worker keep MEDIA_DIR on separate disks)
    image = png(12, 12, seed=11)
    stack.web.post_webhook(image_upsert("local", "UNREADABLE", image))
    media = stack.settled("local", "UNREADABLE")
    (stack.media_dir / media["key"]).unlink()
    # when: it is asked for
    answer = stack.get_media(media["id"])
    # then: a JSON 503 the client can retry, not the image's type with no body
    assert answer.status == 503 and answer.headers["retry-after"]
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json() == {"error": "media store unavailable, retry later"}
