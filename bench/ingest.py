"""Ingest benchmark: durable webhooks/s, latency and web CPU per webhook, against the ceiling.

Run from the repository root:

    .venv/bin/python bench/ingest.py [--seconds 20] [--connections 32] [--web-concurrency 2]

For each web concurrency asked for (`--web-concurrency 1,2,3` compares several), it

1. starts `python -m pipeline web` on a fresh bench database and waits for /health,
2. warms it up, then posts webhooks with unique `data.key.id`s from `--connections`
   keep-alive connections for `--seconds` with wrk (bench/ingest.lua),
3. checks that every 2xx is a stored row of this run and that the run stored no other row,
   and measures the CPU time of the gunicorn master and workers from /proc.

Then it measures the machine's ceiling for one durable INSERT per request (pgbench: 32
clients each INSERT + COMMIT of the same-shaped row into a copy of `events`), prints every
figure next to its target and writes them to bench/RESULTS.md (section
"## Ingest (bench/ingest.py)"). Targets are reported as PASS/MISS, never asserted; the exit
status is 1 only when the stored rows do not match the acknowledged webhooks.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
from common import (
    checkpoint,
    count_log_problems,
    database_name,
    machine,
    machine_ticks,
    query,
    verdict,
    with_database,
)

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "ingest.lua"
RESULTS = ROOT / "bench" / "RESULTS.md"
FIXTURE = (
    ROOT.parent / "shared" / "fixtures" / "evolution" / "messages.upsert__conversation__1.json"
)
HEADING = "## Ingest (bench/ingest.py)"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/zapline_bench"

TARGET_RATE = 2000.0  # durable webhooks/s, at least
TARGET_P99_MS = 50.0  # under
TARGET_CPU_MS = 0.4  # web CPU per webhook, at most

CLK_TCK = os.sysconf("SC_CLK_TCK")

# The fixture as a fallback when shared/ is absent: the same shape and size.
_FALLBACK_BODY = {
    "event": "messages.upsert",
    "instance": "Finchat",
    "data": {
        "key": {
            "remoteJid": "5519998467194@s.whatsapp.net",
            "fromMe": False,
            "id": "3EB0062835B784532CE8B8",
        },
        "pushName": "Mariana M. Macêdo",
        "status": "DELIVERY_ACK",
        "message": {
            "conversation": "gastei 25,78 com Uber",
            "messageContextInfo": {
                "deviceListMetadata": {
                    "senderKeyHash": "2GZdtdx4m0aiRQ==",
                    "senderTimestamp": "1748701972",
                    "senderAccountType": "E2EE",
                    "receiverAccountType": "E2EE",
                    "recipientKeyHash": "aGIbAe0okuuVEw==",
                    "recipientTimestamp": "1748853187",
                },
                "deviceListMetadataVersion": 2,
                "messageSecret": "ZHxBLzK1Fbr8C8lo1yHmU143gZK33A2FFAZPD1GQY3s=",
            },
        },
        "messageType": "conversation",
        "messageTimestamp": 1749766101,
        "instanceId": "188cbb13-bcb7-4d5a-979d-ba0fe75a3ee9",
        "source": "web",
    },
    "destination": "https://n8n.example.com/webhook/1becb0ac-5488-448e-9797-dbf9594c8a8e",
    "date_time": "2025-06-12T19:08:21.833Z",
    "sender": "5519998467194@s.whatsapp.net",
    "server_url": "https://evo.example.com",
    "apikey": "0FABE7621441-4921-8196-42BF3953B6AA",
}


# ---------------------------------------------------------------------------- figures


@dataclass
class WebRun:
    """What one load run against the service measured."""

    web_concurrency: int
    seconds_new: float = 0.0  # from the first request to the deadline (new ids only)
    sent_new: int = 0
    acked_new: int = 0
    acked_dup: int = 0
    odd_2xx: int = 0
    non_2xx: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    latency_us: dict[str, float] = field(default_factory=dict)
    rows: int = 0
    acked_stored: int = 0
    acked_distinct: int = 0
    web_cpu_s: float = 0.0
    web_pids_changed: bool = False
    postgres_cpu_s: float = 0.0
    wrk_cpu_s: float = 0.0
    machine_busy: float = 0.0  # share of all cores busy during the run, 0..1
    busy_before: float = 0.0  # share of all cores busy just before, with the service idle
    other_cpu_s: float = 0.0  # busy CPU not spent by web, postgres or wrk (kernel, others)
    wall_s: float = 0.0
    service_errors: int = 0
    wrk_report: str = ""

    @property
    def rate(self) -> float:
        return self.acked_new / self.seconds_new if self.seconds_new else 0.0

    @property
    def answered_2xx(self) -> int:
        return self.acked_new + self.acked_dup + self.odd_2xx

    @property
    def cpu_ms_per_webhook(self) -> float:
        return 1000 * self.web_cpu_s / self.answered_2xx if self.answered_2xx else float("nan")

    @property
    def p50_ms(self) -> float:
        return self.latency_us.get("p50", float("nan")) / 1000

    @property
    def p99_ms(self) -> float:
        return self.latency_us.get("p99", float("nan")) / 1000

    @property
    def noisy(self) -> bool:
        """Others used over a tenth of the machine during the run: the figures are low."""
        return self.other_cpu_s > 0.1 * (os.cpu_count() or 1) * self.wall_s

    @property
    def problems(self) -> list[str]:
        found = []
        if self.rows != self.acked_new:
            found.append(f"rows stored {self.rows} != new-id 2xx {self.acked_new}")
        if self.acked_stored != self.acked_new or self.acked_distinct != self.acked_new:
            found.append(
                f"of {self.acked_new} acknowledged positions, {self.acked_distinct} distinct and"
                f" {self.acked_stored} found in events with this run's ids"
            )
        unanswered = self.sent_new - self.acked_new - self.non_2xx
        if unanswered > 0:
            found.append(f"{unanswered} new-id requests never answered (raise --tail?)")
        if self.odd_2xx:
            found.append(f"{self.odd_2xx} 2xx answers without position/duplicate")
        return found


@dataclass
class Ceiling:
    """The machine's rate of single-row INSERT + COMMIT from 32 clients."""

    tool: str
    clients: int
    seconds: float
    inserts_per_s: float
    rows: int
    latency_ms: float | None = None
    command: str = ""
    sql: str = ""


# ---------------------------------------------------------------------------- /proc


def _proc_stat(pid: int | str) -> tuple[int, int, int] | None:
    """(ppid, own utime+stime, reaped children's cutime+cstime) in ticks, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])


def _proc_comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _all_pids() -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit()]


def tree_cpu(root: int) -> tuple[dict[int, int], int]:
    """CPU ticks of `root` and its descendants by pid, and the ticks of reaped children."""
    parents: dict[int, int] = {}
    for pid in _all_pids():
        stat = _proc_stat(pid)
        if stat:
            parents[int(pid)] = stat[0]
    members = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    ticks: dict[int, int] = {}
    reaped = 0
    for pid in members:
        stat = _proc_stat(pid)
        if stat:
            ticks[pid] = stat[1]
            reaped += stat[2]
    return ticks, reaped


def postgres_cpu(url: str) -> dict[int, int]:
    """CPU ticks of PostgreSQL's background processes and the bench database's backends.

    Backends of other databases (someone else's tests on the same machine) are left out.
    """
    ours = {
        pid
        for (pid,) in query(
            url,
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() OR datname IS NULL",
        )
    }
    ticks = {}
    for pid in _all_pids():
        if int(pid) in ours or (_proc_comm(pid) == "postgres" and _is_postmaster(pid)):
            stat = _proc_stat(pid)
            if stat:
                ticks[int(pid)] = stat[1]
    return ticks


def _is_postmaster(pid: str) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and _proc_comm(str(stat[0])) != "postgres"


def machine_busy_now(seconds: float = 2.0) -> float:
    """Share of all cores busy over `seconds` of doing nothing ourselves."""
    busy, total = machine_ticks()
    time.sleep(seconds)
    busy2, total2 = machine_ticks()
    return (busy2 - busy) / max(1, total2 - total)


def wait_quiet(limit: float, busy_max: float = 0.1) -> float:
    """Wait up to `limit` s for the machine to be under `busy_max` busy; return the last share."""
    deadline = time.monotonic() + limit
    busy = machine_busy_now()
    while busy > busy_max and time.monotonic() < deadline:
        print(f"  machine {100 * busy:.0f}% busy (not ours): waiting for it to quiet down")
        time.sleep(3)
        busy = machine_busy_now()
    return busy


def ticks_delta(before: dict[int, int], after: dict[int, int]) -> int:
    """Ticks spent between two snapshots; a process that appeared counts from zero."""
    return sum(t - before.get(pid, 0) for pid, t in after.items())


# ---------------------------------------------------------------------------- database


def fresh_database(url: str) -> None:
    """Drop and recreate the bench database (only one whose name says bench)."""
    name = database_name(url)
    if "bench" not in name:
        raise SystemExit(f"refusing to drop {name!r}: --fresh-db needs a database named *bench*")
    conn = psycopg2.connect(with_database(url, "postgres"), connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


# ---------------------------------------------------------------------------- service


class Service:
    """`python -m pipeline web` as a subprocess; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "web", "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"web service exited with {self.proc.returncode}; log: {self.log_path}"
                )
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/health", timeout=2
                ) as answer:
                    if answer.status == 200:
                        return
                    last = f"HTTP {answer.status}"
            except (OSError, urllib.error.URLError) as error:
                last = str(error)
            time.sleep(0.2)
        raise RuntimeError(f"/health not 200 within {timeout:g} s ({last}); log: {self.log_path}")

    def stop(self, grace: float = 20.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                print(f"  web service still up {grace:g} s after SIGTERM: killing it")
        # Workers left behind by a killed master are in its session (start_new_session).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._log.close()


@contextlib.contextmanager
def running_service(env: dict[str, str], port: int, log_path: Path) -> Iterator[Service]:
    service = Service(env, port, log_path)
    try:
        service.wait_healthy()
        yield service
    finally:
        service.stop()


def post_one(port: int, token: str, body: bytes) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/evolution",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


# ---------------------------------------------------------------------------- load


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is missing: install it (Debian package wrk) or run as root")
    print("wrk missing: apt-get install -y wrk")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300, env=apt_env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, timeout=300, env=apt_env)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get installed wrk but it is not on PATH")
    return found


def body_template() -> str:
    """The fixture as compact JSON (as Evolution sends it) with @@ID@@ for data.key.id."""
    body = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else _FALLBACK_BODY
    body["data"]["key"]["id"] = "@@ID@@"
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def run_wrk(
    wrk: str,
    args: argparse.Namespace,
    port: int,
    env: dict[str, str],
    seconds: float,
    tail: float,
    out: Path,
) -> tuple[dict[str, float], list[int], dict[str, int], str, float]:
    """Run wrk; return its counters, acknowledged positions, non-2xx statuses, report, CPU s."""
    deadline = time.time() + seconds
    env = {**env, "BENCH_DEADLINE": f"{deadline:.6f}", "BENCH_OUT": str(out)}
    command = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{max(1, round(seconds + tail))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}/webhooks/evolution",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + tail + 60
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    counters: dict[str, float] = {}
    positions: list[int] = []
    statuses: dict[str, int] = {}
    for line in out.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == "position":
            positions.append(int(value))
        elif name.startswith("status_"):
            statuses[name[7:]] = statuses.get(name[7:], 0) + int(value)
        else:
            counters[name] = float(value)
    counters["deadline"] = deadline
    return counters, positions, statuses, done.stdout, cpu


def bench_web(wrk: str, args: argparse.Namespace, web_concurrency: int, workdir: Path) -> WebRun:
    url = args.database_url
    token = secrets.token_hex(16)
    run_id = secrets.token_hex(4).upper()
    template = body_template()
    body_file = workdir / "body.json"
    body_file.write_text(template, encoding="utf-8")
    dup_id = f"3EB0{run_id}DUP"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "WEBHOOK_TOKEN": token,
        "WEB_CONCURRENCY": str(web_concurrency),
        "PORT": str(args.port),
        "BENCH_BODY_FILE": str(body_file),
        "BENCH_DUP_ID": dup_id,
        "BENCH_TOKEN": token,
    }
    env.pop("WEBHOOK_JWT_SECRET", None)
    run = WebRun(web_concurrency)
    log_path = workdir / f"web-{web_concurrency}.log"
    print(f"\n== web concurrency {web_concurrency}: starting the service on :{args.port}")
    with running_service(env, args.port, log_path) as service:
        first = post_one(args.port, token, template.replace("@@ID@@", dup_id).encode())
        if first.get("duplicate") is not False:
            raise RuntimeError(f"the first webhook was not stored as new: {first}")
        if args.warmup > 0:
            print(f"  warm-up {args.warmup:g} s")
            run_wrk(
                wrk,
                args,
                args.port,
                {**env, "BENCH_PREFIX": f"3EB0{run_id}W"},
                args.warmup,
                0,
                workdir / "warmup.out",
            )
        checkpoint(url)
        run.busy_before = wait_quiet(args.wait_quiet)
        if run.busy_before > 0.1:
            print(
                f"  !! the machine is {100 * run.busy_before:.0f}% busy before the load:"
                " someone else is running something; figures will be low and noisy"
            )
        head = query(url, "SELECT coalesce(max(position), 0) FROM events")[0][0]
        prefix = f"3EB0{run_id}N"
        print(f"  load: {args.connections} connections for {args.seconds:g} s (ids {prefix}*)")
        web_before = tree_cpu(service.proc.pid)
        pg_before = postgres_cpu(url)
        busy_before, total_before = machine_ticks()
        started = time.monotonic()
        counters, positions, statuses, report, wrk_cpu = run_wrk(
            wrk,
            args,
            args.port,
            {**env, "BENCH_PREFIX": prefix},
            args.seconds,
            args.tail,
            workdir / "run.out",
        )
        run.wall_s = time.monotonic() - started
        busy_after, total_after = machine_ticks()
        pg_after = postgres_cpu(url)
        web_after = tree_cpu(service.proc.pid)
    # The service is stopped: every row it will ever write for this run is in.
    run.service_errors = count_log_problems(log_path)
    run.web_pids_changed = set(web_before[0]) != set(web_after[0])
    web_ticks = ticks_delta(web_before[0], web_after[0]) + web_after[1] - web_before[1]
    run.web_cpu_s = web_ticks / CLK_TCK
    run.postgres_cpu_s = ticks_delta(pg_before, pg_after) / CLK_TCK
    run.wrk_cpu_s = wrk_cpu
    run.machine_busy = (busy_after - busy_before) / max(1, total_after - total_before)
    run.other_cpu_s = (busy_after - busy_before) / CLK_TCK - (
        run.web_cpu_s + run.postgres_cpu_s + run.wrk_cpu_s
    )
    run.seconds_new = counters["deadline"] - counters.get("first_sent", counters["deadline"])
    run.sent_new = int(counters.get("sent_new", 0))
    run.acked_new = int(counters.get("acked_new", 0))
    run.acked_dup = int(counters.get("acked_dup", 0))
    run.odd_2xx = int(counters.get("odd_2xx", 0))
    run.non_2xx = int(counters.get("non_2xx", 0))
    run.statuses = statuses
    run.socket_errors = {
        k[7:]: int(v) for k, v in counters.items() if k.startswith("socket_") and v
    }
    run.latency_us = {
        k[8:-3]: v for k, v in counters.items() if k.startswith("latency_") and k.endswith("_us")
    }
    run.wrk_report = report
    dedupe_prefix = json.dumps(["Finchat", "messages.upsert", prefix], separators=(",", ":"))
    dedupe_prefix = dedupe_prefix[: -len('"]')]  # '["Finchat","messages.upsert","3EB0...N'
    run.rows = query(
        url,
        "SELECT count(*) FROM events WHERE position > %s AND starts_with(dedupe_key, %s)",
        (head, dedupe_prefix),
    )[0][0]
    run.acked_distinct = len(set(positions))
    run.acked_stored = query(
        url,
        "SELECT count(*) FROM events"
        " WHERE position = ANY(%s::bigint[]) AND starts_with(dedupe_key, %s)",
        (sorted(set(positions)), dedupe_prefix),
    )[0][0]
    print_web_run(run)
    return run


# ---------------------------------------------------------------------------- ceiling


def scratch_table(url: str) -> None:
    query(
        url,
        "DROP TABLE IF EXISTS bench_ceiling;"
        " CREATE TABLE bench_ceiling"
        " (LIKE events INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES)",
    )


def find_pgbench() -> str | None:
    return shutil.which("pgbench") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)), None
    )


def ceiling_pgbench(pgbench: str, url: str, args: argparse.Namespace, payload: str) -> Ceiling:
    """pgbench, prepared statements: the payload is a parameter parsed as jsonb every time."""
    parts = urlsplit(url)
    sql = (
        "INSERT INTO bench_ceiling (instance, type, dedupe_key, payload) VALUES"
        " ('Finchat', 'messages.upsert',"
        ' \'["Finchat","messages.upsert","\' || CAST(gen_random_uuid() AS text) || \'"]\','
        " CAST(:payload AS jsonb));"
    )
    script = Path(tempfile.mkstemp(prefix="bench-ceiling-", suffix=".sql")[1])
    script.write_text(sql + "\n")
    command = [
        pgbench,
        "-n",
        "-M",
        "prepared",
        "-f",
        str(script),
        "-c",
        str(args.ceiling_clients),
        "-j",
        str(args.threads),
        "-T",
        str(args.ceiling_seconds),
        "-D",
        f"payload={payload}",
        "-h",
        parts.hostname or "127.0.0.1",
        "-p",
        str(parts.port or 5432),
        "-U",
        parts.username or "postgres",
        database_name(url),
    ]
    shown = [c if not c.startswith("payload=") else "payload=<the webhook body>" for c in command]
    shown[shown.index(str(script))] = "ceiling.sql"
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.ceiling_seconds + 60
        )
    finally:
        script.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed: {done.stderr.strip() or done.stdout.strip()}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    if not tps:
        raise RuntimeError(f"no tps in pgbench's output:\n{done.stdout}")
    rows = query(url, "SELECT count(*) FROM bench_ceiling")[0][0]
    return Ceiling(
        "pgbench",
        args.ceiling_clients,
        args.ceiling_seconds,
        float(tps.group(1)),
        rows,
        float(latency.group(1)) if latency else None,
        shlex.join(shown),
        sql,
    )


def ceiling_psycopg2(url: str, args: argparse.Namespace, payload: str) -> Ceiling:
    """Without pgbench: threads each INSERT + COMMIT; psycopg2 frees the GIL while waiting."""
    stop = time.monotonic() + args.ceiling_seconds
    counts = [0] * args.ceiling_clients
    errors: list[BaseException] = []

    def client(slot: int) -> None:
        try:
            conn = psycopg2.connect(url, connect_timeout=5)
            with conn, conn.cursor() as cur:
                n = 0
                while time.monotonic() < stop and n < 10_000_000:
                    cur.execute(
                        "INSERT INTO bench_ceiling (instance, type, dedupe_key, payload)"
                        " VALUES ('Finchat', 'messages.upsert', %s, %s::jsonb)",
                        (f'["Finchat","messages.upsert","c{slot}-{n}"]', payload),
                    )
                    conn.commit()
                    n += 1
                counts[slot] = n
            conn.close()
        except BaseException as error:  # reported after join
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.ceiling_clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.ceiling_seconds + 30)
    elapsed = time.monotonic() - started
    if errors:
        raise RuntimeError(f"ceiling client failed: {errors[0]}")
    rows = query(url, "SELECT count(*) FROM bench_ceiling")[0][0]
    return Ceiling(
        "psycopg2 threads",
        args.ceiling_clients,
        args.ceiling_seconds,
        sum(counts) / elapsed,
        rows,
        command="(psycopg2 fallback, no pgbench)",
    )


def bench_ceiling(args: argparse.Namespace) -> Ceiling:
    url = args.database_url
    payload = body_template().replace("@@ID@@", "3EB0CEILING0000000000")
    scratch_table(url)
    checkpoint(url)
    pgbench = find_pgbench()
    print(
        f"\n== ceiling: {args.ceiling_clients} clients INSERT + COMMIT for"
        f" {args.ceiling_seconds} s ({'pgbench' if pgbench else 'psycopg2'})"
    )
    if pgbench:
        ceiling = ceiling_pgbench(pgbench, url, args, payload)
    else:
        ceiling = ceiling_psycopg2(url, args, payload)
    query(url, "DROP TABLE IF EXISTS bench_ceiling")
    print(f"  {ceiling.inserts_per_s:,.0f} inserts/s ({ceiling.rows:,} rows)")
    return ceiling


# ---------------------------------------------------------------------------- report


def target_lines(run: WebRun) -> list[tuple[str, str, str, str]]:
    """(what, figure, target, PASS/MISS) for the three targets."""
    return [
        (
            "durable webhooks/s",
            f"{run.rate:,.0f}",
            f">= {TARGET_RATE:,.0f}",
            verdict(run.rate >= TARGET_RATE),
        ),
        (
            "p99 latency",
            f"{run.p99_ms:.1f} ms",
            f"< {TARGET_P99_MS:g} ms",
            verdict(run.p99_ms < TARGET_P99_MS),
        ),
        (
            "web CPU per webhook",
            f"{run.cpu_ms_per_webhook:.3f} ms",
            f"<= {TARGET_CPU_MS:g} ms",
            verdict(run.cpu_ms_per_webhook <= TARGET_CPU_MS),
        ),
    ]


def print_web_run(run: WebRun) -> None:
    p = run.latency_us
    print(
        f"  accepted webhooks/s   {run.rate:,.0f}"
        f"  ({run.acked_new:,} new in {run.seconds_new:.2f} s)"
    )
    print(
        f"  latency               p50 {run.p50_ms:.1f} ms  p90 {p.get('p90', 0) / 1000:.1f} ms"
        f"  p99 {run.p99_ms:.1f} ms  p99.9 {p.get('p99.9', 0) / 1000:.1f} ms"
        f"  max {p.get('max', 0) / 1000:.1f} ms"
    )
    print(
        f"  non-2xx               {run.non_2xx}"
        + (f"  {run.statuses}" if run.statuses else "")
        + (f"  socket errors {run.socket_errors}" if run.socket_errors else "")
    )
    print(
        f"  2xx new ids           {run.acked_new:,}"
        f"  (+ {run.acked_dup:,} duplicate re-sends in the tail)"
    )
    print(f"  rows stored           {run.rows:,}")
    print(
        f"  acknowledged stored   {run.acked_stored:,} of {run.acked_new:,}"
        f" ({run.acked_distinct:,} distinct positions)"
    )
    if run.problems:
        for problem in run.problems:
            print(f"  !!! MISMATCH !!! {problem}")
    else:
        print("  rows stored == 2xx    OK")
    print(
        f"  web CPU               {run.web_cpu_s:.2f} s = {run.cpu_ms_per_webhook:.3f} ms per 2xx"
        f" webhook ({run.answered_2xx:,})"
        + ("  (worker pids changed during the run!)" if run.web_pids_changed else "")
    )
    print(
        f"  CPU over {run.wall_s:.1f} s     machine {100 * run.machine_busy:.0f}% busy;"
        f" web {run.web_cpu_s:.1f} s, postgres {run.postgres_cpu_s:.1f} s,"
        f" wrk {run.wrk_cpu_s:.1f} s, other {run.other_cpu_s:.1f} s"
    )
    if run.noisy:
        print(
            f"  !! NOISY: {run.other_cpu_s:.1f} s of CPU went to other processes during the run"
            " (someone else's work): these figures understate the service"
        )
    if run.service_errors:
        print(f"  service logged {run.service_errors} warning/error lines")


def pick_best(runs: list[WebRun]) -> WebRun:
    clean = [r for r in runs if not r.problems and not r.non_2xx] or runs
    quiet = [r for r in clean if not r.noisy] or clean
    return max(quiet, key=lambda r: r.rate)


def machine_facts(url: str, wrk: str) -> dict[str, str]:
    pg = query(url, "SELECT version()")[0][0].split(" on ")[0]
    settings = dict(
        query(
            url,
            "SELECT name, current_setting(name) FROM pg_settings WHERE name IN"
            " ('synchronous_commit', 'fsync', 'wal_sync_method', 'commit_delay',"
            " 'shared_buffers', 'max_wal_size')",
        )
    )
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "api", "events", "pipeline"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if dirty:
        commit += " with uncommitted changes in " + ", ".join(sorted(set(dirty) - {"M", "??"}))
    facts = machine()
    return {
        "nproc": facts["nproc"],
        "cpu": facts["cpu"],
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "postgres": pg,
        "postgres settings": ", ".join(f"{k}={v}" for k, v in sorted(settings.items())),
        "python": facts["python"],
        "wrk": wrk_version.split(" Copyright")[0],
        "commit": commit,
    }


def markdown(
    args: argparse.Namespace,
    command: str,
    facts: dict[str, str],
    runs: list[WebRun],
    best: WebRun,
    ceiling: Ceiling | None,
) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        HEADING,
        "",
        f"Run {now} at commit {facts['commit']}: `{command}`",
        "",
        f"Machine: nproc {facts['nproc']} ({facts['cpu']}), {facts['memory']};"
        f" {facts['postgres']} ({facts['postgres settings']}); Python {facts['python']};"
        f" {facts['wrk']}. Load generator, PostgreSQL and the service share the cores.",
        "",
        f"Load: wrk, {args.threads} threads, {args.connections} keep-alive connections,"
        f" {args.seconds:g} s after a {args.warmup:g} s warm-up, each POST a"
        f" `messages.upsert` (the conversation fixture, {len(body_template().encode())} bytes"
        " compact) with a unique `data.key.id`. The last"
        f" {args.tail:g} s re-send an already stored id, so wrk's cut-off leaves no"
        " unanswered new id; rates count new ids only, CPU per webhook divides by every 2xx.",
        "",
        *(
            [
                f"**NOISY: other processes used {best.other_cpu_s:.0f} s of CPU during the best"
                " run; these figures understate the service. Rerun on a quiet machine.**",
                "",
            ]
            if best.noisy
            else []
        ),
        f"### Targets (web concurrency {best.web_concurrency}, the best run)",
        "",
        "| what | figure | target | |",
        "| --- | --- | --- | --- |",
    ]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in target_lines(best)]
    out += [
        "",
        "### Runs",
        "",
        "| web concurrency | webhooks/s | p50 ms | p99 ms | non-2xx | 2xx (new) | rows stored"
        " | web CPU ms/webhook | machine busy (before) | CPU s: web / postgres / wrk / other"
        " | check |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        check = "MISMATCH: " + "; ".join(r.problems) if r.problems else "rows == 2xx"
        if r.noisy:
            check += f"; NOISY: others used {r.other_cpu_s:.1f} s CPU"
        out.append(
            f"| {r.web_concurrency} | {r.rate:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f}"
            f" | {r.non_2xx} | {r.acked_new:,} | {r.rows:,} | {r.cpu_ms_per_webhook:.3f}"
            f" | {100 * r.machine_busy:.0f}% ({100 * r.busy_before:.0f}%)"
            f" | {r.web_cpu_s:.1f} / {r.postgres_cpu_s:.1f}"
            f" / {r.wrk_cpu_s:.1f} / {r.other_cpu_s:.1f} | {check} |"
        )
    if ceiling:
        out += [
            "",
            "### Ceiling: one durable INSERT per request",
            "",
            f"{ceiling.tool}, {ceiling.clients} clients each `INSERT` one same-shaped row"
            " (same payload, cast to jsonb per row; unique dedupe_key) + `COMMIT`, into"
            f" `bench_ceiling` (LIKE events, with its indexes), {ceiling.seconds:g} s:"
            f" **{ceiling.inserts_per_s:,.0f} inserts/s**"
            + (f" (latency average {ceiling.latency_ms:.1f} ms)" if ceiling.latency_ms else "")
            + f". Service / ceiling = **{best.rate / ceiling.inserts_per_s:.2f}**"
            f" (web concurrency {best.web_concurrency}).",
            "",
            f"Command: `{ceiling.command}`" + (", ceiling.sql:" if ceiling.sql else ""),
            *(["", "```sql", ceiling.sql, "```"] if ceiling.sql else []),
        ]
    return "\n".join(out) + "\n"


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


# ---------------------------------------------------------------------------- main


def concurrency_list(raw: str) -> list[int]:
    values = [int(v) for v in raw.split(",") if v.strip()]
    if not values or any(not 1 <= v <= 64 for v in values):
        raise argparse.ArgumentTypeError("web concurrency: whole numbers 1..64, comma-separated")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=20, help="load duration (20)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections (32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk and pgbench threads (2)")
    parser.add_argument(
        "--web-concurrency",
        type=concurrency_list,
        default=[2],
        help="gunicorn worker processes; a comma list compares several (2)",
    )
    parser.add_argument("--port", type=int, default=18_431, help="service port (18431)")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds (3)")
    parser.add_argument(
        "--tail", type=float, default=1, help="seconds of duplicate re-sends at the end (1)"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60,
        help="wait up to this many s for others' CPU use to drop under 10%% before a run (60)",
    )
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument(
        "--keep-db", action="store_true", help="keep the bench database instead of recreating it"
    )
    parser.add_argument("--ceiling-seconds", type=int, default=10, help="ceiling duration (10)")
    parser.add_argument("--ceiling-clients", type=int, default=32, help="ceiling clients (32)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the ceiling")
    parser.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    parser.add_argument("--keep-logs", action="store_true", help="keep the service logs")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 600 or not 1 <= args.ceiling_seconds <= 600:
        parser.error("--seconds and --ceiling-seconds must be 1..600")
    if not 0.2 <= args.tail <= 10 or not 0 <= args.warmup <= 60 or not 0 <= args.wait_quiet <= 600:
        parser.error("--tail must be 0.2..10, --warmup 0..60 and --wait-quiet 0..600")
    command = (".venv/bin/python bench/ingest.py " + shlex.join(sys.argv[1:])).strip()

    wrk = ensure_wrk()
    url = args.database_url
    if not args.keep_db:
        fresh_database(url)
    migrate = subprocess.run(
        [sys.executable, "-m", "pipeline", "migrate"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if migrate.returncode != 0:
        raise SystemExit(f"migrate failed: {migrate.stderr.strip()}")
    print(f"bench database {database_name(url)}: {migrate.stdout.strip()}")

    workdir = Path(tempfile.mkdtemp(prefix="zapline-bench-"))
    runs: list[WebRun] = []
    failed = False
    try:
        for web_concurrency in args.web_concurrency:
            runs.append(bench_web(wrk, args, web_concurrency, workdir))
        ceiling = None if args.no_ceiling else bench_ceiling(args)
    except BaseException:
        failed = True
        print(f"service logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        if not failed and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.keep_logs:
        print(f"\nservice logs in {workdir}")

    best = pick_best(runs)
    print(f"\n== summary (web concurrency {best.web_concurrency}, the best of {len(runs)})")
    for what, figure, target, ok in target_lines(best):
        print(f"  {what:<22} {figure:>12}   target {target:<10} {ok}")
    print(f"  {'p50 latency':<22} {best.p50_ms:>9.1f} ms")
    print(f"  {'non-2xx':<22} {best.non_2xx:>12}")
    print(f"  {'2xx / rows stored':<22} {best.acked_new:>6,} / {best.rows:,}", end="")
    print("   OK" if not best.problems else "   !!! MISMATCH !!!")
    if len(runs) > 1:
        print(
            "  by web concurrency:   "
            + ", ".join(f"{r.web_concurrency}: {r.rate:,.0f}/s p99 {r.p99_ms:.1f} ms" for r in runs)
        )
    if ceiling:
        print(
            f"  {'ceiling inserts/s':<22} {ceiling.inserts_per_s:>12,.0f}"
            f"   service/ceiling {best.rate / ceiling.inserts_per_s:.2f}"
        )
    if not args.no_write:
        write_results(markdown(args, command, machine_facts(url, wrk), runs, best, ceiling))
        print(f"\nwritten: {RESULTS.relative_to(ROOT)} ({HEADING})")
    return 1 if any(r.problems for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
