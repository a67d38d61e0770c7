"""Shutdown times: SIGTERM to `python -m pipeline web` and `worker` under light load, to exit.

Run from the repository root: `.venv/bin/python bench/shutdown.py [--runs 5]`. Light load:
10 webhooks/s posted (and a WebSocket client held open on web) while the signal lands; the
worker has a 20,000-event backlog to project. Prints min / median / max seconds per service;
the Railway drainingSeconds of each service must exceed the max with margin.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import (  # noqa: E402
    drop_database,
    new_database,
    sql,
    start_web,
    start_worker,
    wait_for,
)


def _body(i: int) -> bytes:
    return json.dumps(
        {
            "event": "messages.upsert",
            "instance": "shutdown",
            "data": {
                "key": {
                    "id": f"S{uuid.uuid4().hex}",
                    "remoteJid": "5511@s.whatsapp.net",
                    "fromMe": False,
                },
                "message": {"conversation": f"m{i}"},
                "messageTimestamp": 1764460800 + i,
            },
        }
    ).encode()


def web_once(url: str) -> float:
    web = start_web(url, API_TOKENS="t:*", WEB_CONCURRENCY="2")
    stop = threading.Event()

    def post() -> None:
        i = 0
        while not stop.is_set():
            with contextlib.suppress(OSError):
                web.post_webhook(_body(i))
            i += 1
            time.sleep(0.1)

    sock = None
    try:
        import websocket  # type: ignore[import-not-found]

        sock = websocket.create_connection(
            f"ws://127.0.0.1:{web.port}/ws?instance=shutdown&token=t", timeout=5
        )
    except Exception:
        sock = None
    poster = threading.Thread(target=post, daemon=True)
    poster.start()
    time.sleep(2)
    started = time.monotonic()
    web.process.send_signal(signal.SIGTERM)
    web.process.wait(60)
    elapsed = time.monotonic() - started
    stop.set()
    if sock is not None:
        sock.close()
    return elapsed


def worker_once(url: str) -> float:
    from events.pool import Pool
    from events.store import EventStore
    from events.webhook import parse_webhook

    store = EventStore(Pool(url, size=1))
    for start in range(0, 20000, 1000):
        store.append([parse_webhook(_body(start + i)) for i in range(1000)])
    worker = start_worker(url)
    wait_for(lambda: sql(url, "SELECT position FROM checkpoints")[0][0] > 0, 60, 0.01)
    time.sleep(0.5)
    started = time.monotonic()
    # Railway signals the container's main process only; dramatiq forwards it to its children.
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(120)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"web": [], "worker": []}
    for _ in range(args.runs):
        url = new_database()
        try:
            results["web"].append(web_once(url))
            results["worker"].append(worker_once(url))
        finally:
            drop_database(url)
    for name, times in results.items():
        print(
            f"{name}: SIGTERM to exit over {len(times)} runs: min {min(times):.2f} s,"
            f" median {statistics.median(times):.2f} s, max {max(times):.2f} s"
        )


if __name__ == "__main__":
    main()
