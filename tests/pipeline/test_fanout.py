"""Live fan-out through a real Redis: every frame once, in order, many to a message."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from pipeline import fanout
from projections.feed import FeedItem

REDIS_URL = "redis://127.0.0.1:6379/0"


def _item(instance: str, cursor: int, text: str) -> FeedItem:
    data = {"instance": instance, "text": text}
    return FeedItem(instance, cursor, "message.created", data, json.dumps(data))


def test_a_frame_reads_back_as_its_cursor_and_itself() -> None:
    text = 'line\none, "quoted", tab\t, ünïcode 🙂'
    framed = fanout.frame(7, "message.updated", 'odd "instance"', json.dumps({"text": text}))

    [(cursor, line)] = fanout.frames(framed.encode())

    assert cursor == 7
    assert line == framed
    assert json.loads(line) == {
        "cursor": 7,
        "type": "message.updated",
        "instance": 'odd "instance"',
        "data": {"text": text},
    }


def test_a_message_that_is_not_frames_is_refused() -> None:
    with pytest.raises(ValueError):
        fanout.frames('{"cursor":1,"type":"x","instance":"a","data":{}}\n{"type":"x"}')


def test_every_frame_arrives_once_in_order_in_few_messages() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    first, second = f"fanout-{uuid.uuid4().hex[:8]}", f"fanout-{uuid.uuid4().hex[:8]}"
    items = [_item(first if n % 2 else second, n, f"text {n}\nnext line") for n in range(1, 1202)]
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    channels = fanout.prefix("test" + uuid.uuid4().hex[:8])
    pubsub.subscribe(channels + first, channels + second)
    try:
        assert fanout.publish(client, channels, items) == len(items)
        received: dict[str, list[tuple[int, str]]] = {first: [], second: []}
        messages = 0
        deadline = time.monotonic() + 10
        while sum(map(len, received.values())) < len(items) and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            instance = message["channel"].decode()[len(channels) :]
            received[instance] += fanout.frames(message["data"])
            messages += 1
    finally:
        pubsub.close()
        client.close()

    for instance in (first, second):
        sent = [i for i in items if i.instance == instance]
        assert [cursor for cursor, _ in received[instance]] == [i.cursor for i in sent]
        assert [json.loads(line)["data"] for _, line in received[instance]] == [
            i.data for i in sent
        ]
    # 601 and 600 frames: two messages each, not one per frame.
    assert messages == 4
