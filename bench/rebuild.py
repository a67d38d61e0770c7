"""Rebuild benchmark: a zero-downtime rebuild of N events while webhooks keep arriving.

Run from the repository root:

    .venv/bin/python bench/rebuild.py [--events 1000000] [--rate 100] [--idle-seconds 20]

1. Loads `--events` webhooks straight into `events` with COPY (100,000 rows per transaction;
   posting a million through HTTP would take longer than the rebuild being measured): 80%
   `messages.upsert` over 2,000 chats in 4 instances, 20% `messages.update` statuses.
2. Projects them live (catchup.catch_up on two connections, as the worker does; timed, not
   a target).
3. Starts `python -m pipeline web` (WEB_CONCURRENCY=2) and `python -m pipeline worker`, then
   for `--idle-seconds` posts webhooks at `--rate`/s on a fixed schedule while two reader
   threads page a chat's messages and an instance's chats: read latency before the rebuild.
4. Runs `python -m pipeline rebuild messages` under the same load: total time, events/s, the
   read latency during it, and every read and webhook answer checked (any non-200 counts).
5. Prints every figure next to its target and writes them to bench/RESULTS.md under
   "## Rebuild (bench/rebuild.py)", leaving other sections.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from projections.catchup import catch_up, freeze_start_up_objects  # noqa: E402
from tests.conftest import drop_database, new_database, start_web, start_worker  # noqa: E402

API = "bench-rebuild-token"
INSTANCES = 4
CHATS = 2000
SECTION = "## Rebuild (bench/rebuild.py)"


def _jid(chat: int) -> str:
    return f"5511{chat:08d}@s.whatsapp.net"


def load(url: str, count: int) -> float:
    """COPY `count` webhooks into events; return seconds."""
    started = time.monotonic()
    conn = psycopg2.connect(url)
    for first in range(0, count, 100_000):
        rows = io.StringIO()
        for i in range(first, min(first + 100_000, count)):
            instance = f"bench{i % INSTANCES}"
            if i % 5 == 4:
                key = f"K{i - 3}"
                payload = {
                    "event": "messages.update",
                    "instance": instance,
                    "data": {"keyId": key, "status": "READ"},
                }
                dedupe = f"{instance}|update|{key}|READ"
            else:
                chat = (i // INSTANCES) % CHATS
                payload = {
                    "event": "messages.upsert",
                    "instance": instance,
                    "data": {
                        "key": {"id": f"K{i}", "remoteJid": _jid(chat), "fromMe": i % 7 == 0},
                        "pushName": f"Contact {chat}",
                        "message": {"conversation": f"message number {i}"},
                        "messageTimestamp": 1764460800 + i,
                    },
                }
                dedupe = f"{instance}|upsert|K{i}"
            text = json.dumps(payload).replace("\\", "\\\\")
            rows.write(f"{instance}\t{payload['event']}\t{dedupe}\t{text}\n")
        rows.seek(0)
        with conn, conn.cursor() as cur:
            cur.copy_expert("COPY events (instance, type, dedupe_key, payload) FROM STDIN", rows)
    conn.close()
    return time.monotonic() - started


class Load:
    """Paced webhooks and two readers; latencies and failures recorded per phase."""

    def __init__(self, port: int, rate: int) -> None:
        self.port = port
        self.rate = rate
        self.phase = "idle"
        self.latencies: dict[str, list[float]] = {"idle": [], "rebuild": []}
        self.failures: dict[str, int] = {"idle": 0, "rebuild": 0}
        self.posted = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._post, daemon=True)] + [
            threading.Thread(target=self._read, args=(n,), daemon=True) for n in range(2)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def _post(self) -> None:
        conn = self._conn()
        started, n = time.monotonic(), 0
        while not self._stop.is_set():
            wait = started + n / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            body = json.dumps(
                {
                    "event": "messages.upsert",
                    "instance": "bench0",
                    "data": {
                        "key": {
                            "id": f"L{uuid.uuid4().hex}",
                            "remoteJid": _jid(n % CHATS),
                            "fromMe": False,
                        },
                        "message": {"conversation": f"live {n}"},
                        "messageTimestamp": 1800000000 + n,
                    },
                }
            )
            try:
                conn.request(
                    "POST",
                    "/webhooks/evolution",
                    body=body,
                    headers={"Content-Type": "application/json", "Authorization": "Bearer bench"},
                )
                answer = conn.getresponse()
                answer.read()
                if answer.status != 200:
                    self.failures[self.phase] += 1
            except OSError:
                self.failures[self.phase] += 1
                conn = self._conn()
            n += 1
            self.posted = n

    def _read(self, seed: int) -> None:
        conn = self._conn()
        pick = random.Random(seed)
        headers = {"Authorization": f"Bearer {API}"}
        while not self._stop.is_set():
            instance = f"bench{pick.randrange(INSTANCES)}"
            if pick.random() < 0.5:
                path = f"/api/instances/{instance}/chats/{_jid(pick.randrange(CHATS))}/messages"
            else:
                path = f"/api/instances/{instance}/chats?limit=50"
            phase = self.phase
            started = time.perf_counter()
            try:
                conn.request("GET", path, headers=headers)
                answer = conn.getresponse()
                answer.read()
                ok = answer.status == 200
            except OSError:
                ok = False
                conn = self._conn()
            self.latencies[phase].append(time.perf_counter() - started)
            if not ok:
                self.failures[phase] += 1
            time.sleep(0.01)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def _machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"nproc {os.cpu_count()} ({cpu}); Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=20)
    parser.add_argument("--no-write", action="store_true", help="print, do not edit RESULTS.md")
    args = parser.parse_args()

    url = new_database()
    web = worker = None
    try:
        loaded = load(url, args.events)
        print(f"loaded {args.events} events with COPY in {loaded:.1f} s", flush=True)
        conn, planner = psycopg2.connect(url), psycopg2.connect(url)
        freeze_start_up_objects()  # as a worker process does when it boots
        started = time.monotonic()
        catch_up(conn, planner)
        live_seconds = time.monotonic() - started
        conn.close()
        planner.close()
        print(f"live projection caught up in {live_seconds:.1f} s", flush=True)

        worker = start_worker(url)
        web = start_web(url, API_TOKENS=f"{API}:*", WEBHOOK_TOKEN="bench", WEB_CONCURRENCY="2")
        bench = Load(web.port, args.rate)
        bench.start()
        time.sleep(args.idle_seconds)
        bench.phase = "rebuild"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "rebuild", "messages"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=3600,
            env={**os.environ, "DATABASE_URL": url},
        )
        total = time.monotonic() - started
        posted = bench.posted
        bench.stop()
        if done.returncode != 0:
            raise SystemExit(f"rebuild failed: {done.stderr}")
        rebuilt = int(re.search(r"from (\d+) events", done.stdout).group(1))  # type: ignore[union-attr]
        swap = re.findall(r"(\d+)/(\d+) \((\d+)/s", done.stderr)
        waited = float(re.search(r"waited ([\d.]+) s", done.stdout).group(1))  # type: ignore[union-attr]
    finally:
        if web is not None:
            web.stop()
        if worker is not None:
            worker.stop()
        drop_database(url)

    idle_p99 = _pct(bench.latencies["idle"], 0.99)
    during_p99 = _pct(bench.latencies["rebuild"], 0.99)
    rows = [
        ("rebuild total", f"{total:.1f} s", "< 90 s", total < 90),
        ("events/s", f"{rebuilt / total:,.0f}", ">= 11,111", rebuilt / total >= 1_000_000 / 90),
        ("live projection waiting for the swap", f"{waited:.1f} s", "", None),
        ("read p99 idle", f"{idle_p99:.1f} ms", "", None),
        (
            "read p99 during",
            f"{during_p99:.1f} ms",
            f"<= {2 * idle_p99:.1f} ms (2x idle)",
            during_p99 <= 2 * idle_p99,
        ),
        (
            "failed reads/webhooks",
            f"{bench.failures['idle']} idle / {bench.failures['rebuild']} during",
            "0",
            bench.failures["idle"] + bench.failures["rebuild"] == 0,
        ),
    ]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True, capture_output=True
    ).stdout.strip()
    lines = [
        SECTION,
        "",
        f"Run {now} at commit {commit}: `.venv/bin/python bench/rebuild.py --events"
        f" {args.events} --rate {args.rate} --idle-seconds {args.idle_seconds:g}`",
        "",
        f"Machine: {_machine()}. PostgreSQL, web (2 workers), worker, the rebuild and the load"
        " generator share the cores.",
        "",
        f"Setup: {args.events:,} events loaded with COPY in {loaded:.1f} s (not through HTTP),"
        f" projected live in {live_seconds:.1f} s ({args.events / live_seconds:,.0f} events/s)."
        f" Load: {args.rate} webhooks/s on a fixed schedule ({posted:,} posted) and two readers"
        " (a chat's messages page, an instance's chats), 10 ms apart.",
        "",
        "| what | figure | target | |",
        "| --- | --- | --- | --- |",
        *[
            f"| {a} | {b} | {c} | {'' if ok is None else 'PASS' if ok else 'MISS'} |"
            for a, b, c, ok in rows
        ],
        "",
        f"Reads measured: {len(bench.latencies['idle']):,} idle (p50"
        f" {_pct(bench.latencies['idle'], 0.5):.1f} ms), {len(bench.latencies['rebuild']):,}"
        f" during (p50 {_pct(bench.latencies['rebuild'], 0.5):.1f} ms). Rebuilt"
        f" {rebuilt:,} events (the log grew during the run); last progress line:"
        f" {swap[-1] if swap else '?'}. Rebuild output: `{done.stdout.strip().splitlines()[0]}`",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.no_write:
        return
    results = ROOT / "bench" / "RESULTS.md"
    old = results.read_text() if results.exists() else "# Benchmarks\n\n"
    if SECTION in old:
        before, _, rest = old.partition(SECTION)
        after = rest[rest.find("\n## ") + 1 :] if "\n## " in rest else ""
        old = before + after
    results.write_text(old.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
