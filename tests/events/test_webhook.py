"""Parsing webhook bodies: what is accepted, and how inline media leaves the payload."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest

from events.errors import BadWebhook
from events.webhook import parse_webhook
from tests.conftest import fixture_bodies


@pytest.mark.parametrize("name", sorted(fixture_bodies()))
def test_every_captured_fixture_is_accepted(name: str) -> None:
    webhook = parse_webhook(fixture_bodies()[name])
    assert webhook.type == name.split("__")[0]
    assert json.loads(webhook.payload_json)["event"] == webhook.type


def test_an_n8n_wrapped_body_is_stored_as_the_inner_webhook() -> None:
    webhook = parse_webhook(fixture_bodies()["presence.update__composing__1.json"])
    assert webhook.type == "presence.update"
    assert "body" not in json.loads(webhook.payload_json)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"instance": "a"}',
        b'{"event": 5}',
        b'{"event": ""}',
        b"\xff\xfe\x00garbage",
    ],
)
def test_a_body_that_is_not_an_object_with_a_string_event_is_refused(body: bytes) -> None:
    with pytest.raises(BadWebhook):
        parse_webhook(body)


def test_an_unknown_event_type_is_accepted() -> None:
    webhook = parse_webhook(b'{"event": "something.new", "instance": "a", "data": {"x": 1}}')
    assert webhook.type == "something.new"


def test_inline_base64_is_replaced_by_a_reference_to_its_bytes() -> None:
    blob = os.urandom(300_000)
    body = json.loads(fixture_bodies()["messages.upsert__imageMessage__2.json"])
    body["data"]["message"]["base64"] = base64.b64encode(blob).decode()

    webhook = parse_webhook(json.dumps(body).encode())

    ref = json.loads(webhook.payload_json)["data"]["message"]["base64"]
    assert ref == {
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
        "mimetype": "image/jpeg",
    }
    assert webhook.attachment is not None and webhook.attachment.data == blob
    assert len(webhook.payload_json) < 10_000


def test_a_data_url_gives_its_own_mimetype() -> None:
    body = {
        "event": "send.message",
        "instance": "a",
        "data": {
            "key": {"id": "K"},
            "message": {
                "base64": "data:image/png;base64," + base64.b64encode(b"\x89PNG....").decode()
            },
        },
    }
    webhook = parse_webhook(json.dumps(body).encode())
    assert webhook.attachment is not None and webhook.attachment.mimetype == "image/png"


def test_base64_that_does_not_decode_is_kept_as_sent() -> None:
    body = fixture_bodies()["messages.upsert__imageMessage__5.json"]  # truncated by its author
    webhook = parse_webhook(body)
    assert webhook.attachment is None
    assert isinstance(json.loads(webhook.payload_json)["data"]["message"]["base64"], str)


def test_characters_jsonb_cannot_hold_are_replaced_not_rejected() -> None:
    body = b'{"event": "x", "instance": "a", "data": {"t": "a\\u0000b", "s": "\\ud800"}}'
    stored = json.loads(parse_webhook(body).payload_json)
    assert stored["data"]["t"] == "a\ufffdb" and "\ud800" not in stored["data"]["s"]
