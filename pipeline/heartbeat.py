"""Worker heartbeats in Redis: each live worker refreshes a key that expires on its own."""

from __future__ import annotations

import json
import time
from typing import Any

PREFIX = "zapline:worker:"
TTL_SECONDS = 15


def beat(client: Any, worker_id: str, info: dict[str, Any]) -> None:
    """Say this worker is alive for the next TTL_SECONDS."""
    client.set(PREFIX + worker_id, json.dumps({**info, "at": time.time()}), ex=TTL_SECONDS)


def forget(client: Any, worker_id: str) -> None:
    """Say this worker has stopped."""
    client.delete(PREFIX + worker_id)


def workers(client: Any) -> list[dict[str, Any]]:
    """Return what every live worker last said of itself."""
    keys = list(client.scan_iter(match=PREFIX + "*", count=100))
    values = client.mget(keys) if keys else []
    return [json.loads(v) for v in values if v]


def count_workers(client: Any) -> int:
    """Return how many workers beat within the last TTL_SECONDS."""
    return sum(1 for _ in client.scan_iter(match=PREFIX + "*", count=100))
