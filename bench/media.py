"""Media benchmark: webhook with inline base64 -> stored, in media/s and MB/s, and the peak RSS
growth of the web and worker processes next to the largest blob.

Run from the repository root:

    .venv/bin/python bench/media.py [--small 200] [--small-mb 1] [--large 5] [--large-mb 50]

1. Starts `python -m pipeline web` (WEB_CONCURRENCY=1) and `python -m pipeline worker`
   (WORKER_PROCESSES=1) on a fresh bench database, media in a temporary MEDIA_DIR (or S3
   with --s3: a local moto server), and warms both up with one small media.
2. Resets the peak RSS (VmHWM) of every process of both trees (/proc/PID/clear_refs) and
   notes their RSS, then posts `--small` media of `--small-mb` MB (distinct random bytes)
   from 8 client threads and waits until every one is `stored`.
3. Resets the peaks again and posts `--large` media of `--large-mb` MB one after the other
   (each waits for its 200), then waits until all are stored.
4. For each phase prints media/s and MB/s (first post to last stored), and per process tree
   the largest (VmHWM - RSS at the phase's start) of its processes, next to the largest blob
   and the target (under 4x), PASS/MISS, never asserted. Writes the figures to
   bench/RESULTS.md under "## Media (bench/media.py)", leaving other sections.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from migrations.runner import migrate  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
HEADING = "## Media (bench/media.py)"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/zapline_bench_media"
TARGET_RATIO = 4.0  # peak RSS growth under this many times the largest blob
TOKEN = "bench-webhook-token"
MB = 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--small-mb", type=float, default=1.0)
    parser.add_argument("--large", type=int, default=5)
    parser.add_argument("--large-mb", type=float, default=50.0)
    parser.add_argument("--s3", action="store_true", help="store in a local moto S3 server")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()

    _recreate(args.database_url)
    with (
        tempfile.TemporaryDirectory(prefix="zapline-bench-media-") as media_dir,
        _storage(args.s3, media_dir) as storage_env,
    ):
        env = {
            **os.environ,
            "DATABASE_URL": args.database_url,
            "WEBHOOK_TOKEN": TOKEN,
            "WEB_CONCURRENCY": "1",
            "WORKER_PROCESSES": "1",
            "WORKER_THREADS": "4",
            "MAX_BODY_BYTES": str(128 * MB),
            **storage_env,
        }
        port = _free_port()
        web = _spawn([sys.executable, "-m", "pipeline", "web", "--bind", f"127.0.0.1:{port}"], env)
        worker = _spawn([sys.executable, "-m", "pipeline", "worker"], env)
        try:
            _wait_http(port)
            poster = Poster(port)
            poster.post(_webhook("warm", os.urandom(1000)))
            _wait_stored(args.database_url, 1, timeout=60)
            time.sleep(1.0)  # let both trees settle after the warm-up
            phases = [
                _phase("small", args.small, args.small_mb, 8, poster, args, web, worker),
                _phase("large", args.large, args.large_mb, 1, poster, args, web, worker),
            ]
        finally:
            for process in (worker, web):
                _stop(process)
    report = _render(args, phases)
    print(report)
    if not args.no_write:
        _write_section(report)
    return 0


# ---------------------------------------------------------------------------- phases


def _phase(
    name: str,
    count: int,
    size_mb: float,
    threads: int,
    poster: Poster,
    args: argparse.Namespace,
    web: subprocess.Popen[bytes],
    worker: subprocess.Popen[bytes],
) -> dict[str, object]:
    size = int(size_mb * MB)
    before = _stored_count(args.database_url)
    trees = {"web": _tree(web.pid), "worker": _tree(worker.pid)}
    start_rss = {pid: _reset_peak(pid) for pids in trees.values() for pid in pids}
    print(f"{name}: posting {count} x {size_mb:g} MB ...", flush=True)
    started = time.monotonic()

    def post_one(i: int) -> None:
        poster.post(_webhook(f"{name}-{i}", os.urandom(size)))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(post_one, range(count)))
    posted = time.monotonic()
    print(f"{name}: all {count} answered 200 after {posted - started:.1f} s", flush=True)
    _wait_stored(args.database_url, before + count, timeout=600)
    elapsed = time.monotonic() - started
    growth = {
        tree: max(_peak(pid) - start_rss[pid] for pid in pids if pid in start_rss)
        for tree, pids in trees.items()
    }
    return {
        "name": name,
        "count": count,
        "size": size,
        "elapsed": elapsed,
        "ingest": posted - started,
        "media_per_s": count / elapsed,
        "mb_per_s": count * size / MB / elapsed,
        "growth": growth,
    }


def _webhook(key_id: str, blob: bytes) -> bytes:
    return json.dumps(
        {
            "event": "messages.upsert",
            "instance": "bench",
            "data": {
                "key": {"id": key_id, "remoteJid": "5511999990000@s.whatsapp.net", "fromMe": False},
                "pushName": "Bench",
                "message": {
                    "videoMessage": {"mimetype": "video/mp4", "caption": key_id},
                    "base64": base64.b64encode(blob).decode(),
                },
                "messageType": "videoMessage",
                "messageTimestamp": 1764460800,
            },
        }
    ).encode()


class Poster:
    """Posts webhooks to the web service, one connection per call."""

    def __init__(self, port: int) -> None:
        self._port = port

    def post(self, body: bytes) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=120)
        try:
            conn.request(
                "POST",
                "/webhooks/evolution",
                body=body,
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )
            answer = conn.getresponse()
            text = answer.read()
            if answer.status != 200:
                raise RuntimeError(f"webhook answered {answer.status}: {text[:200]!r}")
        finally:
            conn.close()


# ---------------------------------------------------------------------------- /proc


def _tree(root: int) -> list[int]:
    """The process and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak(pid: int) -> int:
    """Reset VmHWM to the current RSS (clear_refs 5); return the RSS in bytes."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kb(pid, "VmRSS") * 1024


def _peak(pid: int) -> int:
    return _status_kb(pid, "VmHWM") * 1024


# ---------------------------------------------------------------------------- plumbing


def _recreate(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = psycopg2.connect(url.rsplit("/", 1)[0] + "/postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()
    migrate(url, log=lambda _: None)


@contextlib.contextmanager
def _storage(s3: bool, media_dir: str) -> Iterator[dict[str, str]]:
    if not s3:
        yield {"MEDIA_DIR": media_dir}
        return
    from tests.pipeline.stubs import moto_s3

    with moto_s3("zapline-bench-media") as env:
        yield env


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _free_port() -> int:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def _wait_http(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("web did not answer /health within 30 s")


def _stored_count(url: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FILTER (WHERE status = 'stored'),"
                " count(*) FILTER (WHERE status = 'failed') FROM media"
            )
            stored, failed = cur.fetchone()
    finally:
        conn.close()
    if failed:
        raise RuntimeError(f"{failed} media failed")
    return int(stored)


def _wait_stored(url: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _stored_count(url) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} media stored within {timeout} s")
        time.sleep(0.05)


def _render(args: argparse.Namespace, phases: list[dict[str, object]]) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    largest = max(int(p["size"]) for p in phases)  # type: ignore[call-overload]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        HEADING,
        "",
        f"Run {when} at commit {commit}{' with uncommitted changes' if dirty else ''}:"
        f" `.venv/bin/python bench/media.py{' --s3' if args.s3 else ''}`"
        f" ({args.small} x {args.small_mb:g} MB, then {args.large} x {args.large_mb:g} MB)",
        "",
        f"Machine: nproc {os.cpu_count()}, Python {platform.python_version()}; storage:"
        f" {'S3 (local moto server)' if args.s3 else 'local MEDIA_DIR'}; web: 1 gunicorn worker;"
        " worker: 1 Dramatiq process, 4 threads. Client, PostgreSQL and services share the cores.",
        "",
        "Time runs from the first POST to the last media `stored` (webhook with inline base64 ->"
        " event + attachment -> projected -> store_media -> stored). Peak RSS growth: per process"
        " tree, the largest VmHWM (reset through /proc/PID/clear_refs at the phase's start) minus"
        " that process's RSS at the start.",
        "",
        "| phase | media | media/s | MB/s | web peak growth | worker peak growth |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in phases:
        growth: dict[str, int] = p["growth"]  # type: ignore[assignment]
        size = int(p["size"])  # type: ignore[call-overload]
        lines.append(
            f"| {p['name']} | {p['count']} x {size / MB:g} MB | {p['media_per_s']:.1f} |"
            f" {p['mb_per_s']:.1f} | {growth['web'] / MB:.0f} MB | {growth['worker'] / MB:.0f} MB |"
        )
    lines += [
        "",
        f"Target: peak RSS growth under {TARGET_RATIO:g}x the largest blob ({largest / MB:g} MB)"
        " in each process:",
        "",
        "| process tree | peak growth | x largest blob | target | |",
        "| --- | --- | --- | --- | --- |",
    ]
    for tree in ("web", "worker"):
        peak = max(p["growth"][tree] for p in phases)  # type: ignore[index]
        ratio = peak / largest
        verdict = "PASS" if ratio < TARGET_RATIO else "MISS"
        lines.append(
            f"| {tree} | {peak / MB:.0f} MB | {ratio:.2f}x | < {TARGET_RATIO:g}x | {verdict} |"
        )
    lines += [
        "",
        "For scale: before this work, reading a 50 MB-media body, `json.loads`, base64-decoding"
        " and inserting it as one psycopg2 bytea parameter peaked about 517 MB (~10x) above the"
        " starting RSS.",
    ]
    return "\n".join(lines) + "\n"


def _write_section(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    start = text.find(HEADING)
    if start >= 0:
        end = text.find("\n## ", start + len(HEADING))
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    raise SystemExit(main())
