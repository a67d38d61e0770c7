"""Large bodies: their inline media decoded in chunks gives what parsing them whole gives."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import pytest

from events import webhook as webhook_module
from events.attachments import LARGE_BODY_BYTES
from events.webhook import Webhook, parse_webhook


def _body(encoded: str, *, wrap: bool = False, **message: Any) -> bytes:
    payload: dict[str, Any] = {
        "event": "messages.upsert",
        "instance": "big",
        "data": {
            "key": {"id": "V1"},
            "message": {"videoMessage": {"mimetype": "video/mp4"}, "base64": encoded, **message},
        },
    }
    return json.dumps({"body": payload} if wrap else payload).encode()


def _bytes_of(parsed: Webhook) -> bytes:
    assert parsed.attachment is not None
    return b"".join(bytes(piece) for piece in parsed.attachment.chunks())


def _whole(body: bytes, monkeypatch: pytest.MonkeyPatch) -> Webhook:
    """Parse as if the body were small (the json.loads path)."""
    monkeypatch.setattr(webhook_module, "LARGE_BODY_BYTES", 10**12)
    try:
        return parse_webhook(body)
    finally:
        monkeypatch.undo()


BLOB = os.urandom(LARGE_BODY_BYTES + 4321)


@pytest.mark.parametrize(
    "encoded, wrap",
    [
        (base64.b64encode(BLOB).decode(), False),
        (base64.b64encode(BLOB).decode().rstrip("="), False),  # padding left out
        ("data:video/webm;base64," + base64.b64encode(BLOB).decode(), False),
        (base64.b64encode(BLOB).decode(), True),  # a forwarder's {"body": ...}
    ],
)
def test_a_large_body_is_split_in_chunks_exactly_as_a_whole_parse_would(
    encoded: str, wrap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = _body(encoded, wrap=wrap)
    chunked = parse_webhook(body)
    whole = _whole(body, monkeypatch)
    assert chunked.attachment is not None and chunked.attachment.spool is not None
    assert (chunked.dedupe_key, chunked.payload_json) == (whole.dedupe_key, whole.payload_json)
    assert _bytes_of(chunked) == _bytes_of(whole) == BLOB
    assert chunked.attachment.sha256 == hashlib.sha256(BLOB).hexdigest()
    assert chunked.attachment.mimetype == whole.attachment.mimetype  # type: ignore[union-attr]


def test_a_large_body_with_escapes_is_parsed_whole_and_still_split() -> None:
    encoded = base64.b64encode(BLOB).decode().replace("/", "\\/")
    body = _body("X").replace(b'"X"', b'"' + encoded.encode() + b'"')
    parsed = parse_webhook(body)
    assert parsed.attachment is not None and parsed.attachment.spool is None
    assert _bytes_of(parsed) == BLOB


def test_large_invalid_base64_is_kept_as_sent() -> None:
    body = _body("!" * (LARGE_BODY_BYTES + 10))
    parsed = parse_webhook(body)
    assert parsed.attachment is None
    assert json.loads(parsed.payload_json)["data"]["message"]["base64"].startswith("!!!")


def test_a_large_string_elsewhere_is_not_taken_for_the_media() -> None:
    other = base64.b64encode(BLOB).decode()
    body = json.dumps(
        {"event": "custom.event", "instance": "big", "data": {"file": {"base64": other}}}
    ).encode()
    parsed = parse_webhook(body)
    assert parsed.attachment is None
    assert json.loads(parsed.payload_json)["data"]["file"]["base64"] == other
