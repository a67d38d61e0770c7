"""What the bench scripts share: services as subprocesses, bench databases, RESULTS.md."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def fresh_database(url: str) -> None:
    """Drop the bench database (only one whose name says bench) and migrate a new one."""
    name = database_name(url)
    if "bench" not in name:
        raise SystemExit(f"refusing to drop {name!r}: the bench database must be named *bench*")
    conn = psycopg2.connect(with_database(url, "postgres"), connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()
    subprocess.run(
        [sys.executable, "-m", "pipeline", "migrate"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """A `python -m pipeline` service in its own session; stopped by SIGTERM, then SIGKILL."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 30.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} still up {grace:g} s after SIGTERM: killing it")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._log.close()


def wait_healthy(web: Proc, port: int, timeout: float = 45.0) -> None:
    """Wait until the web service answers /health with 200."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not web.alive():
            raise RuntimeError(f"web exited with {web.proc.returncode}; log: {web.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
                last = f"HTTP {answer.status}"
        except (OSError, urllib.error.URLError) as error:
            last = str(error)
        time.sleep(0.2)
    raise RuntimeError(f"/health not 200 within {timeout:g} s ({last}); log: {web.log_path}")


def wait_worker(worker: Proc, timeout: float = 45.0) -> None:
    """Wait until the worker logs that it started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive():
            raise RuntimeError(f"worker exited: log {worker.log_path}")
        if b"worker started" in worker.log_path.read_bytes():
            return
        time.sleep(0.2)
    raise RuntimeError(f"worker did not start within {timeout:g} s; log: {worker.log_path}")


def write_section(heading: str, section: str) -> None:
    """Replace only the `heading` section of bench/RESULTS.md (or add it); keep the rest."""
    old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmarks\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        text = old.rstrip("\n") + "\n\n" + section
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        tail = "".join(lines[end:])
        text = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    temporary = RESULTS.with_suffix(f".md.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(RESULTS)


def machine() -> dict[str, str]:
    """Cores, CPU model and Python version of this machine, for the RESULTS.md headers."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version()}


def machine_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all cores from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def query(url: str, sql: str, params: tuple | None = None, *, autocommit: bool = False) -> list:
    """Run one statement on a connection of its own; return its rows."""
    conn = psycopg2.connect(url, connect_timeout=5)
    conn.autocommit = autocommit
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall() if cur.description else []
        if not autocommit:
            conn.commit()
        return rows
    finally:
        conn.close()


def checkpoint(url: str) -> None:
    """Start each measurement with little dirty data, so a checkpoint lands in none."""
    with contextlib.suppress(psycopg2.Error):
        query(url, "CHECKPOINT", autocommit=True)


def count_log_problems(path: Path) -> int:
    """Lines a service logged at warning or above (or that are not JSON log lines)."""
    problems = 0
    with path.open("rb") as log:
        for line in log:
            try:
                level = json.loads(line).get("level", "")
            except ValueError:
                # gunicorn's own lines ("[INFO] Booting worker ...") are not JSON.
                problems += b"[ERROR]" in line or b"[CRITICAL]" in line or b"Traceback" in line
                continue
            # dramatiq logs its normal SIGTERM shutdown at warning level.
            shutdown = b"Killing worker process" in line
            problems += level in ("warning", "error", "critical") and not shutdown
    return problems


def projections_consumers(rabbitmq_url: str) -> int | None:
    """Consumers already on the vhost's 'projections' queue (they would take our wake-ups)."""
    try:
        import pika

        params = pika.URLParameters(rabbitmq_url)
        params.socket_timeout = 3
        params.blocked_connection_timeout = 3
        connection = pika.BlockingConnection(params)
        try:
            ok = connection.channel().queue_declare("projections", passive=True)
            return int(ok.method.consumer_count)
        finally:
            connection.close()
    except Exception:
        return None
