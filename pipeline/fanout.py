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


def frame(cursor: int, kind: str, instance: str, data_json: str) -> str:
    """A feed change as clients receive it (contract "Live push"), `data` already JSON."""
    return (
        f'{{"cursor":{cursor},"type":{json.dumps(kind)},'
        f'"instance":{json.dumps(instance)},"data":{data_json}}}'
    )


def publish(client: Any, items: Iterable[Any]) -> int:
    """Publish feed items (.instance, .cursor, .kind, .data_json) in one round trip."""
    pipe = client.pipeline(transaction=False)
    count = 0
    for item in items:
        pipe.publish(
            channel(item.instance), frame(item.cursor, item.kind, item.instance, item.data_json)
        )
        count += 1
    if count:
        pipe.execute()
    return count
