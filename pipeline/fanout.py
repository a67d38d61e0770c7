"""Live fan-out: after a batch commits, publish its feed frames to every web process.

Redis pub/sub carries notifications, never state: a frame lost here is found again by the
web process from the feed table (api/live.py fills gaps), so losing Redis loses nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

CHANNEL_PREFIX = "zapline:feed:"


def channel(instance: str) -> str:
    """The pub/sub channel of an instance's feed."""
    return CHANNEL_PREFIX + instance


def frame(cursor: int, kind: str, instance: str, data: Any) -> str:
    """A feed change as clients receive it (contract "Live push")."""
    return json.dumps(
        {"cursor": cursor, "type": kind, "instance": instance, "data": data},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def publish(client: Any, items: Iterable[Any]) -> int:
    """Publish feed items (with .instance, .cursor, .kind, .data) in one round trip."""
    pipe = client.pipeline(transaction=False)
    count = 0
    for item in items:
        pipe.publish(
            channel(item.instance), frame(item.cursor, item.kind, item.instance, item.data)
        )
        count += 1
    if count:
        pipe.execute()
    return count
