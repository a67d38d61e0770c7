"""Media into S3 over real HTTP (moto's server mode), a worker killed mid-upload, and media
that has no source yet."""

from __future__ import annotations

import hashlib
import os
import urllib.request
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from events.pool import Pool
from events.store import EventStore
from events.webhook import parse_webhook
from tests.conftest import WebServer, sql, start_web, start_worker, wait_for
from tests.netutil import TcpProxy
from tests.pipeline.stubs import image_upsert, moto_s3, png, s3_client

pytestmark = pytest.mark.services

READER = "s3-reader"


@pytest.fixture
def s3() -> Iterator[dict[str, str]]:
    # moto keeps one in-memory S3 per process: a bucket per test keeps tests apart.
    with moto_s3(f"zapline-test-{uuid.uuid4().hex[:12]}") as env:
        yield env


@pytest.fixture
def s3_stack(fresh_database_url: str, s3: dict[str, str]) -> Iterator[tuple[str, WebServer]]:
    """A web and a worker storing media in the S3 stub, with a reader token."""
    env = {**s3, "API_TOKENS": f"{READER}:*"}
    web, worker = start_web(fresh_database_url, **env), start_worker(fresh_database_url, **env)
    yield fresh_database_url, web
    worker.stop()
    web.stop()


def _objects(env: dict[str, str]) -> list[str]:
    listed = s3_client(env).list_objects_v2(Bucket=env["S3_BUCKET"])
    return [item["Key"] for item in listed.get("Contents", [])]


def _media(url: str, key_id: str) -> tuple[object, ...] | None:
    rows = sql(
        url,
        "SELECT id, status, sha256, storage_key, reason FROM media WHERE key_id = %s",
        (key_id,),
    )
    return rows[0] if rows else None


def test_s3_stores_each_content_once_and_redirects_to_a_presigned_sigv4_url(
    s3_stack: tuple[str, WebServer], s3: dict[str, str]
) -> None:
    url, web = s3_stack
    # given: the same PNG in two messages
    image = png(40, 30, seed=11)
    for key_id in ("S3A", "S3B"):
        assert web.post_webhook(image_upsert("s3", key_id, image)).status == 200
    # when: both are stored
    for key_id in ("S3A", "S3B"):
        wait_for(lambda k=key_id: (m := _media(url, k)) and m[1] == "stored")
    media_id, _, digest, key, _ = _media(url, "S3A")  # type: ignore[misc]
    # then: one object under the content's address, with its content type
    assert digest == hashlib.sha256(image).hexdigest()
    assert _objects(s3) == [key] and str(key).endswith(str(digest))
    head = s3_client(s3).head_object(Bucket=s3["S3_BUCKET"], Key=key)
    assert head["ContentType"] == "image/png"
    # and the API answers 302 to a short-lived SigV4 URL that serves the bytes
    answer = web.request(
        "GET", f"/api/media/{media_id}", headers={"Authorization": f"Bearer {READER}"}
    )
    assert answer.status == 302
    location = answer.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert 0 < int(query["X-Amz-Expires"][0]) <= 600
    with urllib.request.urlopen(location, timeout=10) as fetched:
        assert hashlib.sha256(fetched.read()).hexdigest() == digest


def test_a_worker_killed_mid_upload_leaves_nothing_that_blocks_a_retry(
    fresh_database_url: str, s3: dict[str, str]
) -> None:
    url = fresh_database_url
    blob = os.urandom(12 * 1024 * 1024)  # over boto3's multipart threshold here (8 MB)
    EventStore(Pool(url, size=1)).append([parse_webhook(image_upsert("kill", "KILL1", blob))])
    port = int(urlsplit(s3["S3_ENDPOINT_URL"]).port or 0)
    proxy = TcpProxy(port, budget=3 * 1024 * 1024)
    # given: a worker whose upload hangs after 3 MB
    worker = start_worker(url, **{**s3, "S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"})
    try:
        wait_for(lambda: proxy.forwarded >= 3 * 1024 * 1024, timeout=30)
        # when: it is SIGKILLed in the middle of the upload
        worker.kill()
    finally:
        proxy.cut()
    # then: the media is still pending and no object exists
    assert _media(url, "KILL1")[1] == "pending"  # type: ignore[index]
    assert _objects(s3) == []
    # and a new worker (the message is redelivered) stores it
    worker = start_worker(url, **s3, MEDIA_MIN_BACKOFF_MS="20", MEDIA_MAX_BACKOFF_MS="200")
    try:
        wait_for(lambda: (m := _media(url, "KILL1")) and m[1] == "stored", timeout=60)
    finally:
        worker.stop()
    digest = hashlib.sha256(blob).hexdigest()
    assert _media(url, "KILL1")[2] == digest  # type: ignore[index]
    [key] = _objects(s3)
    stored = s3_client(s3).get_object(Bucket=s3["S3_BUCKET"], Key=key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == digest


def test_without_base64_or_evolution_the_media_stays_pending_with_a_reason(
    fresh_database_url: str, tmp_path: object
) -> None:
    url = fresh_database_url
    EventStore(Pool(url, size=1)).append([parse_webhook(image_upsert("nosource", "NOSRC", None))])
    worker = start_worker(url, MEDIA_DIR=str(tmp_path))
    try:
        found = wait_for(lambda: (m := _media(url, "NOSRC")) and m[4] and m)
    finally:
        worker.stop()
    assert found[1] == "pending"
    assert "EVOLUTION_API_URL is not set" in found[4]
    # Nothing was tried: a source configured later gets every attempt.
    assert sql(url, "SELECT attempts FROM media WHERE key_id = 'NOSRC'") == [(0,)]


def test_a_presigned_url_sends_an_html_document_as_a_download(
    s3_stack: tuple[str, WebServer],
) -> None:
    url, web = s3_stack
    page = b"<html><script>fetch('/x?' + location.search)</script></html>"
    web.post_webhook(image_upsert("s3", "HTML1", page, mimetype="Text/HTML; charset=utf-8"))
    wait_for(lambda: (m := _media(url, "HTML1")) and m[1] == "stored")
    media_id = _media(url, "HTML1")[0]  # type: ignore[index]
    answer = web.request(
        "GET", f"/api/media/{media_id}", headers={"Authorization": f"Bearer {READER}"}
    )
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    assert (query["response-content-disposition"], query["response-content-type"]) == (
        ["attachment"],
        ["text/html"],
    )
