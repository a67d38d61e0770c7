"""Live push benchmark: idle WebSocket capacity of one web process, and 200 -> frame latency.

Run from the repository root:

    .venv/bin/python bench/live.py [--clients 10000] [--latency-clients 100] [--rate 200]
                                   [--seconds 20]

On a fresh database (dropped and migrated per run) with the real `python -m pipeline web` and
`python -m pipeline worker` as subprocesses, it

1. **capacity** (WEB_CONCURRENCY=1): opens `--clients` idle WebSocket clients to the single web
   worker process in waves of at most `--connect-rate` per second, checks that every one got
   its `{"type":"live"}` frame, holds them `--hold` seconds (past one 20 s ping round), then
   reads VmRSS/VmHWM of the gunicorn worker (not the master) from /proc and compares it with
   the target (10,000 clients under 1 GB). The RSS with 0 clients is printed for reference,
   and a few webhooks are broadcast to every held client (time to reach the last one).
2. **end to end** (WEB_CONCURRENCY=2, the service default): `--latency-clients` clients on one
   instance; a separate poster process posts webhooks at `--rate`/s for `--seconds` on a fixed
   schedule; for each webhook and client, latency = arrival of the `message.created` frame
   with its key id - receipt of the webhook's 200 (one clock, CLOCK_MONOTONIC). Every client
   must get every message exactly once: missing and duplicate frames are printed loudly.
3. writes the figures to bench/RESULTS.md, section "## Live push (bench/live.py)", keeping
   every other section.

The clients are raw non-blocking sockets on one epoll loop with a minimal handshake (no
greenlet or thread per client), so 10,000 of them cost the load generator little. Targets
are reported as PASS/MISS, never asserted; the exit status is 1 when a frame is missing or
doubled, or a phase could not run.

The web and worker get a RabbitMQ virtual host of their own (`--rabbitmq-vhost`, created
with rabbitmqctl when missing): the `projections` queue is shared by every worker on a
broker, and another checkout's worker would otherwise take this run's wake-ups.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import json
import multiprocessing
import os
import re
import resource
import secrets
import selectors
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg2
from common import (  # noqa: E402
    Proc,
    free_port,
    fresh_database,
    machine,
    machine_ticks,
    percentile,
    projections_consumers,
    verdict,
    wait_worker,
    write_section,
)

from pipeline import fanout  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
FIXTURE = (
    ROOT.parent / "shared" / "fixtures" / "evolution" / "messages.upsert__conversation__1.json"
)
HEADING = "## Live push (bench/live.py)"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/zapline_bench_live"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
API_TOKEN = "benchtok"

TARGET_CLIENTS = 10_000
TARGET_RSS_MB = 1000.0  # "under 1 GB" for TARGET_CLIENTS idle clients, decimal MB
TARGET_P50_MS = 30.0
TARGET_P99_MS = 150.0

CLK_TCK = os.sysconf("SC_CLK_TCK")
NOFILE = 65_536

# The server's frames: {"cursor":N,"type":"...", ...}; a message's row carries "key_id".
# Live frames are compact; backlog and gap-fill frames come from PostgreSQL's
# json_build_object / jsonb text, with blanks around ':' and after ','.
FRAME_HEAD = re.compile(rb'^\{\s*"cursor"\s*:\s*(\d+)\s*,\s*"type"\s*:\s*"([a-z.]+)"')
KEY_ID = re.compile(rb'[{,]\s*"key_id"\s*:\s*"([^"]*)"')
LIVE_FRAME = re.compile(rb'^\{"type":"live","cursor":(\d+)\}$')

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


# ---------------------------------------------------------------------------- environment


def raise_nofile(want: int = NOFILE) -> tuple[int, int]:
    """Raise this process's descriptor limit (children inherit it: the web worker too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rabbitmq_url_for(vhost: str) -> tuple[str, str]:
    """The broker URL on a vhost of our own (created when missing); falls back to the default."""
    base = os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL)
    if not vhost:
        return base, "shared (as configured)"
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return base, "shared (rabbitmqctl not found)"
    try:
        listed = subprocess.run(
            [ctl, "-q", "list_vhosts"], capture_output=True, timeout=30, check=True
        ).stdout.decode()
        if vhost not in listed.split():
            subprocess.run([ctl, "-q", "add_vhost", vhost], capture_output=True, timeout=30)
        user = urlsplit(base).username or "guest"
        subprocess.run(
            [ctl, "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
            capture_output=True,
            timeout=30,
            check=True,
        )
    except (subprocess.SubprocessError, OSError) as error:
        return base, f"shared (could not prepare vhost {vhost}: {type(error).__name__})"
    return urlunsplit(urlsplit(base)._replace(path="/" + quote(vhost, safe=""))), vhost


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else float("nan")


def sample_busy(seconds: float = 1.0) -> float:
    before = machine_ticks()
    time.sleep(seconds)
    return busy_share(before, machine_ticks())


def cpu_seconds(pid: int) -> float:
    with contextlib.suppress(OSError, IndexError, ValueError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return 0.0


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            if os.getpgid(int(entry.name)) == pgid:
                pids.append(int(entry.name))
    return pids


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def memory(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon (MB, 10^6 bytes) and the open descriptors of a process."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "Threads"):
                parts = value.split()
                out[key] = int(parts[0]) * 1024 / 1e6 if key != "Threads" else int(parts[0])
    with contextlib.suppress(OSError):
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def self_rss_mb() -> float:
    return memory(os.getpid()).get("VmRSS", float("nan"))


def socket_memory_mb() -> float:
    """Kernel memory for TCP buffers, machine-wide (not in any process's RSS)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return float("nan")


# ---------------------------------------------------------------------------- services


def wait_healthy(web: Proc, port: int, workers: int, timeout: float = 45.0) -> list[int]:
    """Wait for /health and for `workers` gunicorn children; return their pids."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not web.alive():
            raise RuntimeError(f"web exited with {web.proc.returncode}; log: {web.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                kids = children(web.pid)
                if answer.status == 200 and len(kids) == workers:
                    return kids
                last = f"HTTP {answer.status}, {len(kids)} worker(s)"
        except (OSError, urllib.error.URLError) as error:
            last = str(error)
        time.sleep(0.2)
    raise RuntimeError(f"web not ready within {timeout:g} s ({last}); log: {web.log_path}")


def log_problems(path: Path, limit: int = 5) -> tuple[int, list[str]]:
    """Warning/error lines in a service log (dramatiq's normal shutdown excepted)."""
    count, first = 0, []
    with contextlib.suppress(OSError), path.open("rb") as log:
        for raw in log:
            line = raw.rstrip()
            try:
                record = json.loads(line)
                level = record.get("level", "") if isinstance(record, dict) else ""
                bad = level in ("warning", "error", "critical")
            except ValueError:
                bad = any(m in line for m in (b"[ERROR]", b"[CRITICAL]", b"Traceback", b"WARN"))
            if bad and b"Killing worker process" not in line:
                count += 1
                if len(first) < limit:
                    first.append(line.decode(errors="replace")[:300])
    return count, first


@dataclass
class Stack:
    web: Proc
    worker: Proc | None
    port: int
    web_workers: list[int]

    def stop(self) -> None:
        self.web.stop()
        if self.worker is not None:
            self.worker.stop()


def start_stack(
    env: dict[str, str], logs: Path, tag: str, concurrency: int, connections: int, worker: bool
) -> Stack:
    port = free_port()
    web_env = {
        **env,
        "WEB_CONCURRENCY": str(concurrency),
        "WEB_WORKER_CONNECTIONS": str(connections),
    }
    web = Proc("web", ["web", "--bind", f"127.0.0.1:{port}"], web_env, logs / f"{tag}-web.log")
    work = None
    try:
        if worker:
            work = Proc("worker", ["worker"], env, logs / f"{tag}-worker.log")
        kids = wait_healthy(web, port, concurrency)
        if work is not None:
            wait_worker(work)
    except BaseException:
        web.stop()
        if work is not None:
            work.stop()
        raise
    return Stack(web, work, port, kids)


# ---------------------------------------------------------------------------- webhooks


def load_template() -> dict[str, Any]:
    return json.loads(FIXTURE.read_bytes())


def webhook_body(template: dict[str, Any], instance: str, key_id: str, ts: int) -> bytes:
    body = json.loads(json.dumps(template))
    body["instance"] = instance
    body["data"]["key"]["id"] = key_id
    body["data"]["messageTimestamp"] = ts
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def post_once(conn: Any, path: str, body: bytes, token: str) -> int:
    conn.request(
        "POST",
        path,
        body=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    answer = conn.getresponse()
    answer.read()
    return int(answer.status)


def post_webhooks(port: int, token: str, bodies: list[bytes]) -> list[tuple[int, float]]:
    """Post one after another on one keep-alive connection: (status, monotonic at the 200)."""
    import http.client

    out = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for body in bodies:
            try:
                status = post_once(conn, "/webhooks/evolution", body, token)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                status = -1
            out.append((status, time.monotonic()))
    finally:
        conn.close()
    return out


def poster(
    port: int,
    token: str,
    bodies: list[bytes],
    start: float,
    rate: float,
    threads: int,
    result: Any,
) -> None:
    """Child process: post bodies[i] at start + i/rate from `threads` keep-alive clients.

    Sends back, per webhook, (status, due, sent, answered) as CLOCK_MONOTONIC seconds.
    """
    import http.client

    out: list[tuple[int, float, float, float]] = [(0, 0.0, 0.0, 0.0)] * len(bodies)
    lock = threading.Lock()
    following = iter(range(len(bodies)))
    give_up = start + len(bodies) / rate + 60.0

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while True:
                with lock:
                    i = next(following, None)
                if i is None:
                    return
                due = start + i / rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                sent = time.monotonic()
                if sent > give_up:
                    out[i] = (-2, due, sent, sent)
                    continue
                try:
                    status = post_once(conn, "/webhooks/evolution", bodies[i], token)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    status = -1
                out[i] = (status, due, sent, time.monotonic())
        finally:
            conn.close()

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=max(1.0, give_up + 40 - time.monotonic()))
    result.send(out)
    result.close()


def watch_writers(url: str, stop: threading.Event, out: list[tuple[float, float, int]]) -> None:
    """Every 100 ms: the oldest writing transaction of *other* databases on the server.

    Projection reads only events older than every running transaction (design: gap-safe
    reading), server-wide; a long writer elsewhere holds this run's projection back.
    """
    try:
        conn = psycopg2.connect(url, connect_timeout=5, application_name="zapline-bench-watch")
        conn.autocommit = True
    except psycopg2.Error:
        return
    try:
        with conn.cursor() as cur:
            while not stop.wait(0.1):
                cur.execute(
                    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0),"
                    " count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL"
                    " AND datname IS DISTINCT FROM current_database()"
                )
                age, count = cur.fetchone()
                out.append((time.monotonic(), float(age), int(count)))
    except psycopg2.Error:
        pass
    finally:
        conn.close()


def redis_tap(redis_url: str, channel: str, give_up: float, link: Any, db_url: str = "") -> None:
    """Child process: stamp each message.created frame as Redis delivers it (CLOCK_MONOTONIC;
    a message carries a batch's frames, one per line).

    Sends "ready" once subscribed; on "stop" (or at give_up) sends {key id: arrival} and the
    samples of watch_writers.
    """
    import redis

    stop = threading.Event()
    writers: list[tuple[float, float, int]] = []
    watcher = threading.Thread(target=watch_writers, args=(db_url, stop, writers), daemon=True)
    if db_url:
        watcher.start()

    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=1.0)  # the subscription's confirmation
    link.send("ready")
    seen: dict[bytes, float] = {}
    while time.monotonic() < give_up:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            now = time.monotonic()
            for data in message["data"].split(b"\n"):  # a batch's frames, one per line
                head = FRAME_HEAD.match(data)
                if head is not None and head.group(2) == b"message.created":
                    found = KEY_ID.search(data)
                    if found is not None:
                        seen.setdefault(found.group(1), now)
            continue
        if link.poll():
            break
    pubsub.close()
    stop.set()
    if db_url:
        watcher.join(timeout=5)
    link.send((seen, writers))


# ---------------------------------------------------------------------------- clients


CONNECTING, HANDSHAKE, WAIT_LIVE, LIVE, CLOSED = range(5)


class Client:
    """One raw WebSocket client: a non-blocking socket and what it has seen."""

    __slots__ = (
        "idx",
        "sock",
        "state",
        "buf",
        "out",
        "started",
        "live_at",
        "live_cursor",
        "last_cursor",
        "error",
        "created",
        "dups",
        "regressions",
        "others",
        "pings",
    )

    def __init__(self, idx: int, sock: socket.socket, request: bytes) -> None:
        self.idx = idx
        self.sock = sock
        self.state = CONNECTING
        self.buf = bytearray()
        self.out = request
        self.started = time.monotonic()
        self.live_at = 0.0
        self.live_cursor = -1
        self.last_cursor = -1
        self.error = ""
        self.created: dict[bytes, float] = {}
        self.dups = 0
        self.regressions = 0
        self.others = 0
        self.pings = 0


def take_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Cut the complete server frames (unmasked) off the front of buf."""
    frames = []
    pos, size = 0, len(buf)
    while size - pos >= 2:
        b1 = buf[pos + 1]
        length, head = b1 & 0x7F, 2
        if length == 126:
            if size - pos < 4:
                break
            length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif length == 127:
            if size - pos < 10:
                break
            length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        if b1 & 0x80:
            head += 4  # a masked server frame is a protocol error; skip the key, count below
        if size - pos < head + length:
            break
        frames.append((buf[pos] & 0x0F, bytes(buf[pos + head : pos + head + length])))
        pos += head + length
    if pos:
        del buf[:pos]
    return frames


def masked_frame(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + body


class Fleet:
    """Many WebSocket clients on one epoll loop, in this thread; no greenlet per client."""

    def __init__(self, port: int, instance: str, token: str) -> None:
        self.port = port
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        self.request = (
            f"GET /ws?instance={quote(instance)}&token={quote(token)} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.sel = selectors.DefaultSelector()
        self.clients: list[Client] = []
        self.live = 0
        self.closed = 0
        self.errors: dict[str, int] = {}
        self.watch: set[bytes] = set()  # key ids whose message.created frames are recorded
        self.frames = 0
        self.bad_frames = 0
        self.filled = 0  # feed frames read from the feed table (backlog, gap fill)
        self.bytes = 0

    # -- connecting

    def open_one(self) -> Client:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        client = Client(len(self.clients), sock, self.request)
        self.clients.append(client)
        err = sock.connect_ex(("127.0.0.1", self.port))
        if err not in (0, errno.EINPROGRESS):
            self._fail(client, f"connect: {errno.errorcode.get(err, err)}")
            return client
        self.sel.register(sock, selectors.EVENT_WRITE, client)
        return client

    def pending(self) -> int:
        return len(self.clients) - self.live - self.closed

    def connect(self, count: int, rate: float, timeout: float, progress: bool = False) -> float:
        """Open `count` clients at most `rate` per second; wait for their live frames."""
        t0 = time.monotonic()
        deadline = t0 + count / rate + timeout
        opened = 0
        next_report = t0 + 5
        while time.monotonic() < deadline:
            now = time.monotonic()
            allowed = min(count, int((now - t0) * rate) + 1)
            while opened < allowed and self.pending() < 2000:
                self.open_one()
                opened += 1
            if opened >= count and self.pending() == 0:
                break
            self.poll(0.01)
            if progress and now >= next_report:
                print(f"    {now - t0:5.1f} s: opened {opened:,}, live {self.live:,}", flush=True)
                next_report += 5
        for client in self.clients:
            if client.state not in (LIVE, CLOSED):
                self._fail(client, "timeout before the live frame")
        return time.monotonic() - t0

    # -- the loop

    def poll(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            client: Client = key.data
            if mask & selectors.EVENT_WRITE:
                self._writable(client)
            elif mask & selectors.EVENT_READ:
                self._readable(client)

    def run_for(self, seconds: float, until: Any = None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.poll(0.05)
            if until is not None and until():
                return

    def _writable(self, client: Client) -> None:
        if client.state == CONNECTING:
            err = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(client, f"connect: {errno.errorcode.get(err, err)}")
                return
            client.state = HANDSHAKE
        try:
            sent = client.sock.send(client.out)
        except BlockingIOError:
            return
        except OSError as error:
            self._fail(client, f"send: {type(error).__name__}")
            return
        client.out = client.out[sent:]
        if not client.out:
            self.sel.modify(client.sock, selectors.EVENT_READ, client)

    def _readable(self, client: Client) -> None:
        try:
            data = client.sock.recv(262_144)
        except BlockingIOError:
            return
        except OSError as error:
            self._fail(client, f"recv: {type(error).__name__}")
            return
        now = time.monotonic()
        if not data:
            self._fail(client, "closed by the server" if client.state == LIVE else "eof early")
            return
        self.bytes += len(data)
        client.buf += data
        if client.state == HANDSHAKE:
            end = client.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(client.buf) > 65_536:
                    self._fail(client, "oversized handshake answer")
                return
            status = bytes(client.buf[: client.buf.find(b"\r\n")])
            if not status.startswith(b"HTTP/1.1 101"):
                self._fail(client, f"handshake: {status.decode(errors='replace')[:60]}")
                return
            del client.buf[: end + 4]
            client.state = WAIT_LIVE
        for opcode, payload in take_frames(client.buf):
            self._frame(client, opcode, payload, now)

    def _frame(self, client: Client, opcode: int, payload: bytes, now: float) -> None:
        self.frames += 1
        if opcode == OP_PING:
            client.pings += 1
            with contextlib.suppress(OSError):
                client.sock.send(masked_frame(OP_PONG, payload[:125]))
            return
        if opcode == OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self._fail(client, f"close frame {code}")
            return
        if opcode != OP_TEXT:
            self.bad_frames += 1
            return
        if client.state == WAIT_LIVE:
            live = LIVE_FRAME.match(payload)
            if live is None:
                self.bad_frames += 1
                return
            client.state = LIVE
            client.live_at = now
            client.live_cursor = client.last_cursor = int(live.group(1))
            self.live += 1
            return
        head = FRAME_HEAD.match(payload)
        if head is None:
            if payload.startswith(b'{"type":"ping"'):
                client.pings += 1
            else:
                self.bad_frames += 1
            return
        cursor = int(head.group(1))
        if payload.startswith(b'{"cursor" :'):
            self.filled += 1
        if cursor <= client.last_cursor:
            client.regressions += 1
        client.last_cursor = max(client.last_cursor, cursor)
        if head.group(2) != b"message.created":
            client.others += 1
            return
        found = KEY_ID.search(payload)
        key = found.group(1) if found else b""
        if key not in self.watch:
            client.others += 1
            return
        if key in client.created:
            client.dups += 1
        else:
            client.created[key] = now

    def _fail(self, client: Client, why: str) -> None:
        if client.state == CLOSED:
            return
        if client.state == LIVE:
            self.live -= 1
        client.state = CLOSED
        client.error = why
        self.closed += 1
        self.errors[why] = self.errors.get(why, 0) + 1
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(client.sock)
        client.sock.close()

    def close_all(self) -> None:
        for client in self.clients:
            if client.state != CLOSED:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(client.sock)
                client.sock.close()
                client.state = CLOSED
        self.sel.close()


# ---------------------------------------------------------------------------- capacity


@dataclass
class Capacity:
    clients: int = 0
    live: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    connect_seconds: float = 0.0
    hold_seconds: float = 0.0
    rss0: dict[str, float] = field(default_factory=dict)
    rss_held: dict[str, float] = field(default_factory=dict)
    rss_after_broadcast: dict[str, float] = field(default_factory=dict)
    rss_after_close: dict[str, float] = field(default_factory=dict)
    master_rss: float = 0.0
    web_cpu_connect: float = 0.0
    client_rss: float = 0.0
    socket_mb_held: float = 0.0
    pings: int = 0
    busy_before: float = 0.0
    broadcast: list[tuple[int, int, float, float, float]] = field(default_factory=list)
    broadcast_dups: int = 0
    problems: int = 0
    problem_lines: list[str] = field(default_factory=list)
    after_close_left: int = -1
    dropped: int = 0
    filled: int = 0
    webhook_ms: list[float] = field(default_factory=list)
    drop_reasons: dict[str, int] = field(default_factory=dict)

    def per_client_kb(self) -> float:
        if not self.live:
            return float("nan")
        return (self.rss_held.get("VmRSS", 0) - self.rss0.get("VmRSS", 0)) * 1000 / self.live

    def ok(self) -> bool:
        return self.live >= TARGET_CLIENTS and self.rss_held.get("VmRSS", 1e9) < TARGET_RSS_MB


def fmt_mem(m: dict[str, float]) -> str:
    if not m:
        return "n/a"
    return (
        f"VmRSS {m.get('VmRSS', float('nan')):,.1f} MB, VmHWM {m.get('VmHWM', float('nan')):,.1f}"
        f" MB, RssAnon {m.get('RssAnon', float('nan')):,.1f} MB, fds {m.get('fds', 0):,.0f}"
    )


def run_capacity(args: argparse.Namespace, env: dict[str, str], logs: Path) -> Capacity:
    result = Capacity(clients=args.clients)
    instance = f"LiveCap{secrets.token_hex(3)}"
    print(f"\n== capacity: {args.clients:,} idle clients, WEB_CONCURRENCY=1, instance {instance}")
    result.busy_before = sample_busy()
    stack = start_stack(env, logs, "capacity", 1, args.clients + 1000, worker=args.broadcasts > 0)
    fleet: Fleet | None = None
    try:
        pid = stack.web_workers[0]
        time.sleep(2)
        result.rss0 = memory(pid)
        print(f"  web worker pid {pid}, 0 clients: {fmt_mem(result.rss0)}")
        fleet = Fleet(stack.port, instance, API_TOKEN)
        cpu0 = cpu_seconds(pid)
        result.connect_seconds = fleet.connect(
            args.clients, args.connect_rate, timeout=60, progress=True
        )
        result.web_cpu_connect = cpu_seconds(pid) - cpu0
        print(
            f"  connected in {result.connect_seconds:.1f} s: live {fleet.live:,} of "
            f"{args.clients:,}; errors {fleet.errors or 'none'}; web worker CPU"
            f" {result.web_cpu_connect:.1f} s"
        )
        t_hold = time.monotonic()
        fleet.run_for(args.hold)
        result.hold_seconds = time.monotonic() - t_hold
        result.live = fleet.live
        result.errors = dict(fleet.errors)
        result.pings = sum(c.pings for c in fleet.clients)
        result.rss_held = memory(pid)
        result.master_rss = memory(stack.web.pid).get("VmRSS", float("nan"))
        result.client_rss = self_rss_mb()
        result.socket_mb_held = socket_memory_mb()
        print(
            f"  held {result.hold_seconds:.0f} s ({result.pings:,} pings seen): live"
            f" {result.live:,}; web worker {fmt_mem(result.rss_held)}"
        )
        print(
            f"  per client {result.per_client_kb():.1f} kB; master {result.master_rss:.1f} MB;"
            f" this load generator {result.client_rss:.1f} MB; kernel TCP buffers"
            f" {result.socket_mb_held:.1f} MB"
        )
        if args.broadcasts > 0 and fleet.live:
            live_before = fleet.live
            run_broadcast(args, stack, fleet, instance, result)
            fleet.run_for(args.after_broadcast)  # do lagging sockets survive the catch-up?
            result.rss_after_broadcast = memory(pid)
            result.dropped = live_before - fleet.live
            result.drop_reasons = {
                k: v - result.errors.get(k, 0)
                for k, v in fleet.errors.items()
                if v != result.errors.get(k, 0)
            }
            print(
                f"  {args.after_broadcast:g} s after the broadcasts: live {fleet.live:,}; dropped"
                f" by the server {result.dropped:,} {result.drop_reasons or ''};"
                f" {fmt_mem(result.rss_after_broadcast)}"
            )
            if result.dropped:
                print(f"  !!! {result.dropped:,} CLIENTS LOST THEIR SOCKET DURING THE BROADCASTS")
        fleet.close_all()
        fleet = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and memory(pid).get("fds", 0) > result.rss0.get("fds", 0):
            time.sleep(0.5)
        time.sleep(2)
        result.rss_after_close = memory(pid)
        print(f"  all closed: {fmt_mem(result.rss_after_close)}")
    finally:
        if fleet is not None:
            fleet.close_all()
        stack.stop()
    for proc in (stack.web, stack.worker):
        if proc is not None:
            count, lines = log_problems(proc.log_path)
            result.problems += count
            result.problem_lines += [f"{proc.name}: {line}" for line in lines]
    result.webhook_ms = webhook_times(stack.web.log_path)
    if result.webhook_ms:
        print(
            "  webhook time in the web worker (its request log) while broadcasting: "
            + ", ".join(f"{ms:.0f}" for ms in result.webhook_ms)
            + " ms"
        )
    return result


def webhook_times(path: Path) -> list[float]:
    """Milliseconds of each POST /webhooks/... in the web's request log."""
    out = []
    with contextlib.suppress(OSError), path.open("rb") as log:
        for line in log:
            if b'"path": "/webhooks' not in line:
                continue
            with contextlib.suppress(ValueError, TypeError):
                out.append(float(json.loads(line)["ms"]))
    return out


def _post_into(out: list[tuple[int, float]], port: int, token: str, bodies: list[bytes]) -> None:
    out.extend(post_webhooks(port, token, bodies))


def run_broadcast(
    args: argparse.Namespace, stack: Stack, fleet: Fleet, instance: str, result: Capacity
) -> None:
    """Post webhooks (`--broadcast-burst` back to back per step) while the clients keep
    reading; time from each 200 to its frame at every client."""
    template = load_template()
    token = env_token()
    run = secrets.token_hex(3).upper()
    n = 0
    for _ in range(args.broadcasts):
        keys = [f"LVC{run}{n + i:04d}" for i in range(args.broadcast_burst)]
        bodies = [
            webhook_body(template, instance, k, 1764460800 + n + i) for i, k in enumerate(keys)
        ]
        n += len(keys)
        fleet.watch.update(k.encode() for k in keys)
        answers: list[tuple[int, float]] = []
        sender = threading.Thread(
            target=_post_into, args=(answers, stack.port, token, bodies), daemon=True
        )
        want = fleet.live
        sender.start()

        def everyone(
            last: bytes = keys[-1].encode(), want: int = want, sender: Any = sender
        ) -> bool:
            if sender.is_alive():
                return False
            return sum(1 for c in fleet.clients if last in c.created) >= want

        fleet.run_for(30, until=everyone)
        sender.join(timeout=30)
        for key, (status, answered) in zip(keys, answers, strict=False):
            arrivals = sorted(
                (c.created[key.encode()] - answered) * 1000
                for c in fleet.clients
                if key.encode() in c.created
            )
            got = len(arrivals)
            p50 = percentile(arrivals, 50)
            last = arrivals[-1] if arrivals else float("nan")
            first = arrivals[0] if arrivals else float("nan")
            result.broadcast.append((status, got, first, p50, last))
            print(
                f"  broadcast {len(result.broadcast)}: HTTP {status}; reached {got:,} of"
                f" {want:,} clients; 200 -> frame first {first:.0f} ms, p50 {p50:.0f} ms,"
                f" last {last:.0f} ms"
            )
        fleet.run_for(1.0)
    result.broadcast_dups = sum(c.dups for c in fleet.clients)
    result.filled = fleet.filled


# ---------------------------------------------------------------------------- end to end


@dataclass
class EndToEnd:
    clients: int = 0
    live: int = 0
    posted: int = 0
    ok_200: int = 0
    non_200: dict[int, int] = field(default_factory=dict)
    expected: int = 0
    received: int = 0
    missing: int = 0
    duplicates: int = 0
    regressions: int = 0
    unexpected: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # sorted ms
    negative: int = 0
    answer_ms: list[float] = field(default_factory=list)  # sorted post -> 200
    send_lag_ms: list[float] = field(default_factory=list)  # sorted sent - due
    post_seconds: float = 0.0
    drain_seconds: float = 0.0
    busy_before: float = 0.0
    busy_during: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    worst_messages: list[tuple[str, float]] = field(default_factory=list)
    by_second: list[tuple[int, float, float]] = field(default_factory=list)
    consumers_before: int | None = None
    problems: int = 0
    problem_lines: list[str] = field(default_factory=list)
    web_rss: list[float] = field(default_factory=list)
    stages: list[tuple[str, int, float, float, float]] = field(default_factory=list)
    foreign_writer_max: float = float("nan")
    foreign_writer_share: float = float("nan")
    filled: int = 0
    bad_frames: int = 0
    client_loop_ms: float = 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)

    def exact(self) -> bool:
        return self.missing == 0 and self.duplicates == 0 and self.received == self.expected


def env_token() -> str:
    return os.environ["BENCH_LIVE_WEBHOOK_TOKEN"]


def run_end_to_end(args: argparse.Namespace, env: dict[str, str], logs: Path) -> EndToEnd:
    result = EndToEnd(clients=args.latency_clients)
    instance = f"LiveE2E{secrets.token_hex(3)}"
    concurrency = args.web_concurrency
    print(
        f"\n== end to end: {args.latency_clients} clients, {args.rate:g} webhooks/s for"
        f" {args.seconds:g} s, WEB_CONCURRENCY={concurrency}, instance {instance}"
    )
    result.consumers_before = projections_consumers(env["RABBITMQ_URL"])
    template = load_template()
    token = env_token()
    run = secrets.token_hex(3).upper()
    result.busy_before = sample_busy()
    stack = start_stack(env, logs, "e2e", concurrency, 10_000, worker=True)
    fleet: Fleet | None = None
    try:
        # Warm-up: one client sees 50 webhooks projected and pushed (not measured).
        warm = Fleet(stack.port, instance, API_TOKEN)
        warm.connect(1, 10, timeout=15)
        warm_keys = [f"LVW{run}{n:04d}" for n in range(50)]
        warm.watch.update(k.encode() for k in warm_keys)
        statuses = post_webhooks(
            stack.port,
            token,
            [webhook_body(template, instance, k, 1764460000 + n) for n, k in enumerate(warm_keys)],
        )
        warm.run_for(30, until=lambda: len(warm.clients[0].created) >= len(warm_keys))
        print(
            f"  warm-up: {sum(1 for s, _ in statuses if s == 200)} of {len(warm_keys)} posted,"
            f" {len(warm.clients[0].created)} pushed"
        )
        warm.close_all()

        fleet = Fleet(stack.port, instance, API_TOKEN)
        fleet.connect(args.latency_clients, args.connect_rate, timeout=30)
        result.live = fleet.live
        print(f"  clients live: {fleet.live} of {args.latency_clients}; errors {fleet.errors}")

        count = int(args.rate * args.seconds)
        keys = [f"LVE{run}{n:06d}" for n in range(count)]
        bodies = [webhook_body(template, instance, k, 1764470000 + n) for n, k in enumerate(keys)]
        fleet.watch.update(k.encode() for k in keys)
        result.posted = count

        ctx = multiprocessing.get_context("spawn")
        tap_link, tap_end = ctx.Pipe()
        tap = ctx.Process(
            target=redis_tap,
            args=(
                env.get("REDIS_URL", DEFAULT_REDIS_URL),
                feed_channel(args.database_url, instance),
                time.monotonic() + args.seconds + args.drain + 120,
                tap_end,
                args.database_url,
            ),
            daemon=True,
        )
        tap.start()
        if not tap_link.poll(30):
            raise RuntimeError("the Redis tap did not subscribe within 30 s")
        tap_link.recv()
        receive, send = ctx.Pipe(duplex=False)
        start = time.monotonic() + 2.0
        child = ctx.Process(
            target=poster,
            args=(stack.port, token, bodies, start, args.rate, args.threads, send),
            daemon=True,
        )
        cpu_pids = {
            "web workers": stack.web_workers,
            "worker": group_pids(stack.worker.pid) if stack.worker else [],
        }
        cpu0 = {name: sum(cpu_seconds(p) for p in pids) for name, pids in cpu_pids.items()}
        self_cpu0 = time.process_time()
        child.start()
        send.close()
        while time.monotonic() < start:
            fleet.poll(0.05)
        busy0 = machine_ticks()
        answers: list[tuple[int, float, float, float]] | None = None
        give_up = start + args.seconds + 90
        loop_time, loops = 0.0, 0
        while time.monotonic() < give_up and answers is None:
            t = time.monotonic()
            fleet.poll(0.02)
            loop_time += time.monotonic() - t
            loops += 1
            if receive.poll():
                answers = receive.recv()
        result.busy_during = busy_share(busy0, machine_ticks())
        result.post_seconds = time.monotonic() - start
        child.join(timeout=10)
        if answers is None:
            raise RuntimeError("the poster did not report within its time budget")
        result.client_loop_ms = loop_time * 1000 / max(1, loops)

        acked = {keys[i].encode(): a for i, a in enumerate(answers) if a[0] == 200}
        result.ok_200 = len(acked)
        for status, _, _, _ in answers:
            if status != 200:
                result.non_200[status] = result.non_200.get(status, 0) + 1
        result.expected = len(acked) * fleet.live
        live_clients = [c for c in fleet.clients if c.state == LIVE]

        def all_in() -> bool:
            return sum(len(c.created) for c in live_clients) >= result.expected

        t_drain = time.monotonic()
        fleet.run_for(args.drain, until=all_in)
        fleet.run_for(3.0)  # anything doubled after the last expected frame shows up here
        result.drain_seconds = time.monotonic() - t_drain
        result.cpu = {
            name: sum(cpu_seconds(p) for p in pids) - cpu0[name] for name, pids in cpu_pids.items()
        }
        result.cpu["this load generator"] = time.process_time() - self_cpu0
        result.web_rss = [memory(p).get("VmRSS", float("nan")) for p in stack.web_workers]
        tap_link.send("stop")
        published, writers = tap_link.recv() if tap_link.poll(30) else ({}, [])
        during = [w for w in writers if start <= w[0] <= start + args.seconds]
        if during:
            result.foreign_writer_max = max(w[1] for w in during)
            result.foreign_writer_share = sum(1 for w in during if w[1] > 0.5) / len(during)
        result.filled = fleet.filled
        result.bad_frames = fleet.bad_frames
        tap.join(timeout=10)
        stamps = db_stamps(args.database_url, instance, [k.decode() for k in acked])

        latencies, by_key_worst = [], {}
        start_of = {k: a[3] for k, a in acked.items()}
        seconds: dict[int, list[float]] = {}
        for client in fleet.clients:
            if client.state != LIVE and client.live_at == 0.0:
                continue
            result.duplicates += client.dups
            result.regressions += client.regressions
            for key, at in client.created.items():
                answered = start_of.get(key)
                if answered is None:
                    result.unexpected += 1
                    continue
                ms = (at - answered) * 1000
                latencies.append(ms)
                by_key_worst[key] = max(by_key_worst.get(key, -1e9), ms)
                seconds.setdefault(int(answered - start), []).append(ms)
            result.missing += sum(1 for k in acked if k not in client.created)
        result.received = len(latencies)
        result.expected = len(acked) * sum(1 for c in fleet.clients if c.live_at)
        result.errors = dict(fleet.errors)
        latencies.sort()
        result.latencies = latencies
        result.negative = sum(1 for x in latencies if x < 0)
        result.answer_ms = sorted((a[3] - a[2]) * 1000 for a in answers if a[0] == 200)
        result.send_lag_ms = sorted((a[2] - a[1]) * 1000 for a in answers if a[0] == 200)
        result.worst_messages = sorted(
            ((k.decode(), v) for k, v in by_key_worst.items()), key=lambda kv: -kv[1]
        )[:5]
        for second in sorted(seconds):
            values = sorted(seconds[second])
            result.by_second.append((second, percentile(values, 50), percentile(values, 99)))
        result.stages = stages(fleet.clients, start_of, published, stamps)
    finally:
        if fleet is not None:
            fleet.close_all()
        stack.stop()
    for proc in (stack.web, stack.worker):
        if proc is not None:
            count, lines = log_problems(proc.log_path)
            result.problems += count
            result.problem_lines += [f"{proc.name}: {line}" for line in lines]
    print_end_to_end(result)
    return result


def feed_channel(url: str, instance: str) -> str:
    """The Redis channel the worker publishes the instance's frames on."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            return fanout.prefix(fanout.scope(cur)) + instance
    finally:
        conn.close()


def db_stamps(url: str, instance: str, keys: list[str]) -> dict[bytes, tuple[float, float]]:
    """Per key id: (events.received_at, messages.updated_at) as CLOCK_MONOTONIC seconds.

    Both are now() of their transaction's start: the webhook's insert, the projection batch.
    """
    offset = time.time() - time.monotonic()
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT m.key_id, extract(epoch FROM e.received_at),"
                " extract(epoch FROM m.updated_at) FROM messages m JOIN events e"
                " ON e.instance = m.instance AND e.type = 'messages.upsert'"
                " AND e.payload->'data'->'key'->>'id' = m.key_id"
                " WHERE m.instance = %s AND m.key_id = ANY(%s)",
                (instance, keys),
            )
            rows = cur.fetchall()
    finally:
        conn.close()
    return {k.encode(): (float(r) - offset, float(u) - offset) for k, r, u in rows}


def stages(
    clients: list[Client],
    answered: dict[bytes, float],
    published: dict[bytes, float],
    stamps: dict[bytes, tuple[float, float]],
) -> list[tuple[str, int, float, float, float]]:
    """Where the time goes: (stage, samples, p50, p99, max) in ms."""
    parts: dict[str, list[float]] = {
        "webhook transaction start -> 200": [],
        "200 -> projection transaction start": [],
        "projection transaction start -> frame in Redis (tap)": [],
        "200 -> frame in Redis (tap)": [],
        "frame in Redis (tap) -> client, every pair": [],
        "frame in Redis (tap) -> last client": [],
    }
    for key, done in answered.items():
        got = stamps.get(key)
        if got is not None:
            parts["webhook transaction start -> 200"].append((done - got[0]) * 1000)
            parts["200 -> projection transaction start"].append((got[1] - done) * 1000)
        pub = published.get(key)
        if pub is None:
            continue
        parts["200 -> frame in Redis (tap)"].append((pub - done) * 1000)
        if got is not None:
            parts["projection transaction start -> frame in Redis (tap)"].append(
                (pub - got[1]) * 1000
            )
        arrivals = [c.created[key] for c in clients if key in c.created]
        parts["frame in Redis (tap) -> client, every pair"] += [(a - pub) * 1000 for a in arrivals]
        if arrivals:
            parts["frame in Redis (tap) -> last client"].append((max(arrivals) - pub) * 1000)
    out = []
    for name, values in parts.items():
        values.sort()
        out.append(
            (
                name,
                len(values),
                percentile(values, 50),
                percentile(values, 99),
                percentile(values, 100),
            )
        )
    return out


def print_end_to_end(r: EndToEnd) -> None:
    print(
        f"  posted {r.posted:,}: 200 {r.ok_200:,}, other {r.non_200 or 'none'}; post -> 200"
        f" p50 {percentile(r.answer_ms, 50):.1f} ms, p99 {percentile(r.answer_ms, 99):.1f} ms;"
        f" send lag p99"
        f" {percentile(r.send_lag_ms, 99):.1f} ms; posting took {r.post_seconds:.1f} s"
    )
    print(
        f"  frames expected {r.expected:,} ({r.ok_200:,} x {r.live} clients), received"
        f" {r.received:,}; missing {r.missing:,}, duplicate {r.duplicates:,}, cursor regressions"
        f" {r.regressions:,}, unexpected {r.unexpected:,}; drained in {r.drain_seconds:.1f} s"
    )
    if r.missing or r.duplicates or r.received != r.expected or r.regressions:
        print(
            f"  !!! NOT EXACTLY ONCE: MISSING {r.missing:,}, DUPLICATE {r.duplicates:,},"
            f" CURSOR REGRESSIONS {r.regressions:,} !!!"
        )
    if r.errors:
        print(f"  !!! client errors: {r.errors}")
    print(
        f"  frames from the feed table (gap fill, json_build_object text): {r.filled:,};"
        f" unparsed frames: {r.bad_frames}; other databases' writing transactions while"
        f" posting: oldest {r.foreign_writer_max:.1f} s, one older than 0.5 s in"
        f" {r.foreign_writer_share:.0%} of 100 ms samples"
    )
    print(
        f"  200 -> frame: p50 {r.p(50):.1f} ms, p90 {r.p(90):.1f} ms, p99 {r.p(99):.1f} ms,"
        f" max {r.p(100):.1f} ms; before the 200: {r.negative:,}"
    )
    print(
        f"  targets: p50 < {TARGET_P50_MS:g} ms {verdict(r.p(50) < TARGET_P50_MS)},"
        f" p99 < {TARGET_P99_MS:g} ms {verdict(r.p(99) < TARGET_P99_MS)}"
    )
    cpu = ", ".join(f"{k} {v:.1f} s" for k, v in r.cpu.items())
    print(
        f"  machine busy {r.busy_during:.0%} (before {r.busy_before:.0%}); CPU: {cpu};"
        f" web worker RSS {', '.join(f'{x:.0f}' for x in r.web_rss)} MB"
    )
    worst = ", ".join(f"{k} {v:.0f} ms" for k, v in r.worst_messages)
    print(f"  slowest messages (last client): {worst}")
    seconds = " ".join(f"{s}:{p50:.0f}/{p99:.0f}" for s, p50, p99 in r.by_second)
    print(f"  p50/p99 ms by second of the run: {seconds}")
    print("  where the time goes (ms):")
    for name, n, p50, p99, top in r.stages:
        print(f"    {name:<55} n={n:<7,} p50 {p50:8.1f}  p99 {p99:8.1f}  max {top:8.1f}")


# ---------------------------------------------------------------------------- report


def git_state() -> str:
    with contextlib.suppress(Exception):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, timeout=10
        ).stdout.decode()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            timeout=10,
        ).stdout.decode()
        changed = sorted(
            line[3:] for line in dirty.splitlines() if not line[3:].startswith("bench/")
        )
        text = f"commit {head.strip()}"
        if changed:
            text += f" with uncommitted changes in {', '.join(changed)}"
        return text
    return "commit ?"


def render(
    args: argparse.Namespace,
    command: str,
    vhost: str,
    cap: Capacity | None,
    e2e: EndToEnd | None,
) -> str:
    m = machine()
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        HEADING,
        "",
        f"Run {now} at {git_state()}: `{command}`",
        "",
        f"Machine: nproc {m['nproc']} ({m['cpu']}); Python {m['python']}. The load generator,"
        " PostgreSQL, Redis, RabbitMQ, web and worker share the cores (and so does whatever else"
        " runs on the machine: see 'busy before'). Clients are raw non-blocking sockets on one"
        " epoll loop (no greenlet or thread per client), RLIMIT_NOFILE raised to"
        f" {resource.getrlimit(resource.RLIMIT_NOFILE)[0]:,}; RabbitMQ vhost: {vhost}.",
        "",
        "### Targets",
        "",
        "| what | figure | target | |",
        "| --- | --- | --- | --- |",
    ]
    if cap is not None:
        rss = cap.rss_held.get("VmRSS", float("nan"))
        lines.append(
            f"| idle clients held by one web worker, its VmRSS | {cap.live:,} clients,"
            f" {rss:,.0f} MB | {TARGET_CLIENTS:,} under {TARGET_RSS_MB / 1000:g} GB |"
            f" {verdict(cap.ok())} |"
        )
    if e2e is not None:
        lines += [
            f"| 200 -> frame, p50 | {e2e.p(50):.1f} ms | < {TARGET_P50_MS:g} ms |"
            f" {verdict(e2e.p(50) < TARGET_P50_MS)} |",
            f"| 200 -> frame, p99 | {e2e.p(99):.1f} ms | < {TARGET_P99_MS:g} ms |"
            f" {verdict(e2e.p(99) < TARGET_P99_MS)} |",
            f"| every client gets every message exactly once | {e2e.received:,} of"
            f" {e2e.expected:,}, missing {e2e.missing:,}, duplicate {e2e.duplicates:,} |"
            f" all, once | {'PASS' if e2e.exact() else 'FAIL'} |",
        ]
    if cap is not None:
        lines += [
            "",
            "### Capacity (WEB_CONCURRENCY=1)",
            "",
            f"{cap.clients:,} clients opened at most {args.connect_rate:g}/s on one instance"
            f" without `after` (each gets `live` at the head), held {cap.hold_seconds:.0f} s"
            f" (server pings every 20 s: {cap.pings:,} seen), then RSS of the gunicorn worker"
            " process from /proc/PID/status (MB = 10^6 bytes).",
            "",
            "| state | VmRSS MB | VmHWM MB | RssAnon MB | open fds |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, mem in (
            ("0 clients (after start)", cap.rss0),
            (f"{cap.live:,} clients live, after the hold", cap.rss_held),
            (f"after {len(cap.broadcast)} broadcasts to all of them", cap.rss_after_broadcast),
            ("all clients closed", cap.rss_after_close),
        ):
            if mem:
                lines.append(
                    f"| {name} | {mem.get('VmRSS', 0):,.1f} | {mem.get('VmHWM', 0):,.1f} |"
                    f" {mem.get('RssAnon', 0):,.1f} | {mem.get('fds', 0):,.0f} |"
                )
        errors = ", ".join(f"{k}: {v}" for k, v in cap.errors.items()) or "none"
        lines += [
            "",
            f"Live {cap.live:,} of {cap.clients:,} (client errors: {errors}); connecting took"
            f" {cap.connect_seconds:.1f} s and {cap.web_cpu_connect:.1f} s of web worker CPU"
            f" ({cap.web_cpu_connect * 1e6 / max(1, cap.live):,.0f} us per client);"
            f" {cap.per_client_kb():.1f} kB of worker RSS per client. Gunicorn master"
            f" {cap.master_rss:.0f} MB; this load generator {cap.client_rss:.0f} MB; kernel TCP"
            f" buffer memory, machine-wide, {cap.socket_mb_held:.1f} MB (in no RSS). Machine busy"
            f" before: {cap.busy_before:.0%}.",
        ]
        if cap.broadcast:
            lines += [
                "",
                "Broadcast to every held client (one webhook at a time; arrival stamped by the"
                " one-thread client loop, so the tail includes its own reading of"
                f" {cap.live:,} sockets):",
                "",
                "| webhook | HTTP | clients reached | 200 -> first frame ms | p50 ms | last ms |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for n, (status, got, first, p50, last) in enumerate(cap.broadcast, 1):
                lines.append(f"| {n} | {status} | {got:,} | {first:.0f} | {p50:.0f} | {last:.0f} |")
            lines.append("")
            lines.append(
                f"Duplicate frames during the broadcasts: {cap.broadcast_dups}; frames read"
                f" from the feed table (gap fill): {cap.filled:,}; clients dropped by the server"
                f" in the {args.after_broadcast:g} s after: {cap.dropped:,}"
                + (f" {cap.drop_reasons}" if cap.drop_reasons else "")
                + "."
            )
        if cap.webhook_ms:
            lines += [
                "",
                "Time of each broadcast webhook in the web worker (its own request log, ms),"
                " the same gevent loop that writes the frames: "
                + ", ".join(f"{ms:,.0f}" for ms in cap.webhook_ms)
                + ".",
            ]
        lines += ["", f"Warning/error lines in web and worker logs: {cap.problems}."]
        lines += [f"    {line}" for line in cap.problem_lines]
    if e2e is not None:
        cpu = ", ".join(f"{k} {v:.1f} s" for k, v in e2e.cpu.items())
        non200 = ", ".join(f"{k}: {v}" for k, v in e2e.non_200.items()) or "none"
        lines += [
            "",
            f"### End to end (WEB_CONCURRENCY={args.web_concurrency})",
            "",
            f"{e2e.live} clients on one instance (kernel-balanced over the web workers), after 50"
            f" warm-up webhooks; a separate poster process sends {args.rate:g} webhooks/s for"
            f" {args.seconds:g} s on a fixed schedule from {args.threads} keep-alive"
            " connections, each a `messages.upsert` (the conversation fixture) with a unique"
            " `data.key.id`. Latency = arrival of the `message.created` frame with that key id"
            " at a client - the poster's receipt of the 200, over every (client, message) pair;"
            " one clock (CLOCK_MONOTONIC). Negative = pushed before the 200 arrived.",
            "",
            "| posted | 200 | frames expected | received | missing | duplicate | p50 ms | p90 ms"
            " | p99 ms | max ms | before 200 | post -> 200 p50 / p99 ms | send lag p99 ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {e2e.posted:,} | {e2e.ok_200:,} | {e2e.expected:,} | {e2e.received:,} |"
            f" {e2e.missing:,} | {e2e.duplicates:,} | {e2e.p(50):.1f} | {e2e.p(90):.1f} |"
            f" {e2e.p(99):.1f} | {e2e.p(100):.1f} | {e2e.negative:,} |"
            f" {percentile(e2e.answer_ms, 50):.1f} / {percentile(e2e.answer_ms, 99):.1f} |"
            f" {percentile(e2e.send_lag_ms, 99):.1f} |",
            "",
            f"Non-200 answers: {non200}; cursor regressions (a frame at or below the last"
            f" cursor): {e2e.regressions}; client errors: {e2e.errors or 'none'}. Machine busy"
            f" {e2e.busy_during:.0%} while posting (before: {e2e.busy_before:.0%}); CPU while"
            f" posting and draining: {cpu} (poster process not included). Web worker RSS after:"
            f" {', '.join(f'{x:.0f}' for x in e2e.web_rss)} MB. Other consumers on the"
            f" vhost's `projections` queue at start: {e2e.consumers_before}.",
            "",
            "p50 / p99 ms by second of the run (by the 200's time): "
            + " ".join(f"{s}: {a:.0f}/{b:.0f}" for s, a, b in e2e.by_second),
            "",
            "Where the time goes, per webhook (transaction starts are PostgreSQL's now() of"
            " `events.received_at` and `messages.updated_at`; 'frame in Redis' is stamped by a"
            " separate process subscribed to the instance's channel):",
            "",
            "| stage | samples | p50 ms | p99 ms | max ms |",
            "| --- | --- | --- | --- | --- |",
            *(
                f"| {name} | {n:,} | {p50:.1f} | {p99:.1f} | {top:.1f} |"
                for name, n, p50, p99, top in e2e.stages
            ),
            "",
            f"Frames read from the feed table (gap fill): {e2e.filled:,}; unparsed frames:"
            f" {e2e.bad_frames}. Writing transactions of other databases on the same server"
            f" while posting (they hold back gap-safe reading server-wide): oldest"
            f" {e2e.foreign_writer_max:.1f} s; one older than 0.5 s in"
            f" {e2e.foreign_writer_share:.0%} of 100 ms samples.",
            "",
            f"Warning/error lines in web and worker logs: {e2e.problems}.",
        ]
        lines += [f"    {line}" for line in e2e.problem_lines]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000, help="capacity: idle clients")
    parser.add_argument("--latency-clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0, help="webhooks/s (end to end)")
    parser.add_argument("--seconds", type=float, default=20.0, help="posting time (end to end)")
    parser.add_argument("--connect-rate", type=float, default=500.0, help="new clients/s")
    parser.add_argument("--hold", type=float, default=25.0, help="capacity: seconds to hold")
    parser.add_argument("--broadcasts", type=int, default=3, help="capacity: webhooks to all")
    parser.add_argument("--broadcast-burst", type=int, default=1, help="webhooks per broadcast")
    parser.add_argument(
        "--after-broadcast", type=float, default=20.0, help="capacity: hold after broadcasts"
    )
    parser.add_argument("--threads", type=int, default=16, help="poster connections")
    parser.add_argument("--web-concurrency", type=int, default=2, help="end to end")
    parser.add_argument("--drain", type=float, default=30.0, help="max wait for late frames")
    parser.add_argument("--skip-capacity", action="store_true")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--rabbitmq-vhost", default="zapline_bench_live")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_LIVE_DATABASE_URL", DEFAULT_DATABASE_URL),
    )
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "bench/live.py", *sys.argv[1:]])

    soft, hard = raise_nofile()
    print(f"RLIMIT_NOFILE {soft:,}/{hard:,}; nproc {os.cpu_count()}")
    need = max(args.clients, args.latency_clients) + 1000
    if soft < need:
        print(f"  !!! descriptor limit {soft:,} is below the {need:,} this run needs")
    rabbitmq_url, vhost = rabbitmq_url_for(args.rabbitmq_vhost)
    print(f"RabbitMQ vhost: {vhost}")
    webhook_token = secrets.token_urlsafe(16)
    os.environ["BENCH_LIVE_WEBHOOK_TOKEN"] = webhook_token
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "RABBITMQ_URL": rabbitmq_url,
        "WEBHOOK_TOKEN": webhook_token,
        "API_TOKENS": f"{API_TOKEN}:*",
        "ADMIN_TOKEN": secrets.token_urlsafe(16),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("RAILWAY_DEPLOYMENT_ID", None)
    env.pop("ZAPLINE_ENV", None)
    fresh_database(args.database_url)
    logs = Path(tempfile.mkdtemp(prefix="zapline-bench-live-"))
    print(f"service logs: {logs}")

    cap: Capacity | None = None
    e2e: EndToEnd | None = None
    failed = False
    if not args.skip_capacity:
        try:
            cap = run_capacity(args, env, logs)
            print(
                f"  => {cap.live:,} clients held, web worker VmRSS"
                f" {cap.rss_held.get('VmRSS', float('nan')):,.0f} MB (VmHWM"
                f" {cap.rss_held.get('VmHWM', float('nan')):,.0f} MB; 0 clients:"
                f" {cap.rss0.get('VmRSS', float('nan')):,.0f} MB); target {TARGET_CLIENTS:,}"
                f" clients under {TARGET_RSS_MB / 1000:g} GB: {verdict(cap.ok())}"
            )
            if cap.problems:
                print(f"  !!! {cap.problems} warning/error lines in the service logs:")
                for line in cap.problem_lines:
                    print(f"      {line}")
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            print(f"  !!! capacity run failed: {error}")
            failed = True
    if not args.skip_e2e:
        try:
            e2e = run_end_to_end(args, env, logs)
            failed = failed or not e2e.exact()
            if e2e.problems:
                print(f"  !!! {e2e.problems} warning/error lines in the service logs:")
                for line in e2e.problem_lines:
                    print(f"      {line}")
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            print(f"  !!! end-to-end run failed: {error}")
            failed = True
    if not args.no_write and (cap is not None or e2e is not None):
        write_section(HEADING, render(args, command, vhost, cap, e2e))
        print(f"\nwrote {RESULTS.relative_to(ROOT)} ({HEADING})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
