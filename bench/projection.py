"""Projection benchmark: catch-up events/s against the read ceiling, and webhook-to-row latency.

Run from the repository root:

    .venv/bin/python bench/projection.py [--events 200000] [--latency-seconds 20] [--rate 200]

1. Catch-up. On a fresh bench database it loads `--events` `messages.upsert` webhooks (not
   timed; unique key ids over ~1,000 chats in a few instances, increasing timestamps), then
   - the ceiling: reads and decodes those events with the runner's gap-safe query
     (`read_after`, batches of 1000, a Cursor advancing), applying and writing nothing;
   - a straightforward Python projector (bench/straightforward.py), the kind issue 3 measured
     at about 11,000 events/s on the machine it set 15,000 on: the same target on any machine
     is that many times its rate, measured here in the same run;
   - `catchup.catch_up(conn, planner)` from checkpoint 0 in this process, as the worker runs
     it: the next batch is planned on a second connection while the previous one commits,
     and each committed batch's feed is published to Redis for live sockets (the garbage
     collector is set as a worker process sets it when it boots);
   - the same on one connection, batch after batch (projection emptied first);
   - a second, instrumented catch-up (projection tables emptied, checkpoint back to 0): a
     copy of `run_batch` that times lock + checkpoint, `read_after`, `apply_events` (split
     into its SQL statements, their parameter quoting, result fetching and the Python
     around them) and the commit.
2. Latency. On a fresh database it starts `python -m pipeline web` (WEB_CONCURRENCY=2) and
   `python -m pipeline worker`, posts webhooks at `--rate`/s for `--latency-seconds` from a
   paced client (a fixed schedule, keep-alive connections), and a poller in a separate
   process looks every ~2 ms for the posted key ids in `messages`, stamping when it first sees
   each. Latency = first seen - 200 received, both CLOCK_MONOTONIC; the poll cycle is the
   resolution (the row was committed between the previous poll's start and this one's).
3. Prints every figure next to its target (PASS/MISS, never asserted) and writes them to
   bench/RESULTS.md under "## Projection (bench/projection.py)", leaving other sections.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import http.client
import json
import multiprocessing
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg2
import psycopg2.extensions
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    Proc,
    checkpoint,
    count_log_problems,
    database_name,
    free_port,
    fresh_database,
    machine,
    machine_ticks,
    percentile,
    projections_consumers,
    query,
    verdict,
    wait_healthy,
    wait_worker,
    with_database,
    write_section,
)
from straightforward import project as project_straightforward  # noqa: E402

from events.pool import Pool  # noqa: E402
from events.store import Cursor, EventStore, read_after  # noqa: E402
from events.webhook import parse_webhook  # noqa: E402
from pipeline import fanout  # noqa: E402
from projections import catchup, runner  # noqa: E402
from projections.tables import PROJECTION, Batch  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
HEADING = "## Projection (bench/projection.py)"
FIXTURE = (
    ROOT.parent / "shared" / "fixtures" / "evolution" / "messages.upsert__conversation__1.json"
)
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/zapline_bench_projection"
REDIS_URL = "redis://127.0.0.1:6379/0"

TARGET_CATCH_UP = 15_000.0  # events/s, at least
# Issue 3's figures on the machine it set TARGET_CATCH_UP on: a straightforward Python
# projector and the read-only ceiling.
ISSUE_STRAIGHTFORWARD = 11_000.0
ISSUE_CEILING = 31_000.0
# The same target for any machine: that many times a straightforward projector's rate.
TARGET_OVER_STRAIGHTFORWARD = TARGET_CATCH_UP / ISSUE_STRAIGHTFORWARD
TARGET_P50_MS = 20.0  # under
TARGET_P99_MS = 100.0  # under

POLL_INTERVAL_S = 0.002
LOAD_BATCH = 1000
SENDER_THREADS = 8


# ---------------------------------------------------------------------------- helpers


def connect(url: str, *, autocommit: bool = False) -> Any:
    conn = psycopg2.connect(url, connect_timeout=5, application_name="zapline-bench")
    conn.autocommit = autocommit
    return conn


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _postgres_ticks() -> dict[str, int]:
    """CPU ticks of every PostgreSQL process by pid (backends of exited sessions are lost)."""
    ticks = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "postgres":
                raw = Path(f"/proc/{pid}/stat").read_text()
                rest = raw[raw.rindex(")") + 2 :].split()
                ticks[pid] = int(rest[11]) + int(rest[12])
    return ticks


def wait_quiet(max_seconds: float, below: float = 0.25) -> float:
    """Wait (at most max_seconds) for a second in which the machine is less than `below`
    busy; return the last second's busy share, so a run on a shared machine says so."""
    deadline = time.monotonic() + max_seconds
    while True:
        busy0, total0 = machine_ticks()
        time.sleep(1.0)
        busy1, total1 = machine_ticks()
        busy = (busy1 - busy0) / max(1, total1 - total0)
        if busy < below or time.monotonic() > deadline:
            return busy


@dataclass
class Usage:
    """CPU use during a phase: this process, PostgreSQL (all its processes), the machine."""

    own_s: float = 0.0
    postgres_s: float = 0.0
    machine_busy: float = 0.0  # share of all cores busy, 0..1
    # The overlapped catch-up's writing thread (catchup._commit): its CPU and wall time.
    writer_cpu_s: float = 0.0
    writer_wall_s: float = 0.0

    def describe(self, wall: float, events: int = 0) -> str:
        per_event = f" ({1e6 * self.own_s / events:.0f} us CPU per event)" if events else ""
        writer = ""
        if self.writer_wall_s and events:
            writer = (
                f"; the writing thread {1e6 * self.writer_cpu_s / events:.1f} us CPU and"
                f" {1e6 * self.writer_wall_s / events:.1f} us wall time per event"
            )
        return (
            f"this process {self.own_s / wall:.0%} of a core{per_event}, PostgreSQL"
            f" {self.postgres_s / wall:.0%} of a core, machine {self.machine_busy:.0%} busy"
            + writer
        )


@contextlib.contextmanager
def measure_usage(usage: Usage) -> Any:
    own0 = sum(os.times()[:2])
    pg0 = _postgres_ticks()
    busy0, total0 = machine_ticks()
    try:
        yield usage
    finally:
        busy1, total1 = machine_ticks()
        usage.own_s = sum(os.times()[:2]) - own0
        pg1 = _postgres_ticks()
        usage.postgres_s = sum(t - pg0.get(pid, 0) for pid, t in pg1.items()) / CLK_TCK
        usage.machine_busy = (busy1 - busy0) / max(1, total1 - total0)


# ---------------------------------------------------------------------------- webhooks


def load_template() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Spec:
    """Which webhook number n is: its instance, chat and key id."""

    run: str
    chats: int
    instances: int
    base_ts: int = 1_749_766_101

    def instance(self, chat: int) -> str:
        return f"bench{chat % self.instances}"

    def chat_of(self, n: int) -> int:
        # A fixed pseudo-random spread, the same in every run (a batch of 1000 touches ~630
        # distinct chats, some of them several times).
        return ((n * 2_654_435_761 + 12_345) % 2**32 >> 8) % self.chats

    def key_id(self, n: int) -> str:
        return f"{self.run}{n:012X}"

    def body(self, template: dict[str, Any], n: int) -> tuple[str, str, bytes]:
        chat = self.chat_of(n)
        jid = f"5511{chat:08d}@s.whatsapp.net"
        item = copy.deepcopy(template)
        instance = self.instance(chat)
        item["instance"] = instance
        item["sender"] = jid
        data = item["data"]
        data["key"]["id"] = self.key_id(n)
        data["key"]["remoteJid"] = jid
        data["messageTimestamp"] = self.base_ts + n
        text = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return instance, data["key"]["id"], text


def load_events(url: str, spec: Spec, count: int) -> float:
    """Append `count` webhooks in transactions of LOAD_BATCH; return the seconds it took."""
    template = load_template()
    pool = Pool(url, size=1)
    store = EventStore(pool)
    started = time.monotonic()
    try:
        for first in range(0, count, LOAD_BATCH):
            batch = [
                parse_webhook(spec.body(template, n)[2])
                for n in range(first, min(count, first + LOAD_BATCH))
            ]
            answers = store.append(batch)
            if any(a.duplicate for a in answers):
                raise SystemExit("load: a generated key id was already stored")
            if (first // LOAD_BATCH) % 50 == 49:
                print(f"  loaded {first + len(batch):,} events", flush=True)
    finally:
        pool.close()
    return time.monotonic() - started


# ---------------------------------------------------------------------------- catch-up


def read_ceiling(url: str, expected: int, usage: Usage) -> tuple[int, float]:
    """Read + decode every event with the gap-safe query, batches of 1000; (events, seconds)."""
    conn = connect(url)
    try:
        with measure_usage(usage):
            cursor, total = Cursor(), 0
            started = time.perf_counter()
            for _ in range(expected // 1000 + 10):
                with conn, conn.cursor() as cur:
                    read = read_after(cur, cursor, 1000)
                if not read:
                    break
                total += len(read)
                cursor = read[-1][0]
            return total, time.perf_counter() - started
    finally:
        conn.close()


def timed_catch_up(url: str, usage: Usage, *, overlapped: bool) -> tuple[int, float]:
    """(events, seconds); connections close after the CPU is counted (an exited backend's
    ticks are lost)."""
    conn, planner = connect(url), connect(url)
    client = redis.Redis.from_url(REDIS_URL)
    with conn.cursor() as cur:
        channels = fanout.prefix(fanout.scope(cur))
    conn.rollback()
    commit = catchup._commit

    def timed_commit(*args: Any) -> Batch:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return commit(*args)
        finally:
            usage.writer_wall_s += time.perf_counter() - wall
            usage.writer_cpu_s += time.thread_time() - cpu

    try:
        with measure_usage(usage), mock.patch.object(catchup, "_commit", timed_commit):
            started = time.perf_counter()
            total = catchup.catch_up(
                conn,
                planner if overlapped else None,
                # As the worker does after each commit.
                after_commit=lambda batch: fanout.publish(client, channels, batch.feed),
            )
            return total, time.perf_counter() - started
    finally:
        conn.close()
        planner.close()
        client.close()


@dataclass
class Phases:
    """Seconds spent in each part of a batch, summed over the instrumented catch-up."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    batches: list[tuple[int, float]] = field(default_factory=list)  # (events, seconds)

    def rate_by_part(self, parts: int = 4) -> list[float]:
        """Events/s over each successive part (quarter by default) of the batches."""
        size = max(1, len(self.batches) // parts)
        chunks = [self.batches[i : i + size] for i in range(0, size * parts, size)]
        return [sum(n for n, _ in chunk) / sum(s for _, s in chunk) for chunk in chunks if chunk]

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds
        self.calls[name] += 1


def _statement_name(sql: Any) -> str:
    text = sql.decode("utf-8", "replace") if isinstance(sql, bytes) else str(sql)
    words = " ".join(text.split()[:6]).lower()
    if text.count("INSERT INTO") > 1:
        return "sql move staged messages + chats into place, holds (one round trip)"
    if text.startswith("COPY "):
        return "sql COPY " + text.split()[1].replace("zapline_stage_", "stage ")
    if "UNION ALL" in text and "FROM messages m" in text:
        return "sql load messages + holds"
    for needle, name in (
        ("from messages m", "sql load messages"),
        ("from message_holds", "sql load holds"),
        ("from chats c", "sql load chats"),
        ("insert into messages", "sql write messages"),
        ("insert into chats", "sql write chats"),
        ("insert into feed_heads", "sql feed heads"),
        ("insert into feed ", "sql write feed"),
        ("insert into media", "sql media"),
        ("insert into parked", "sql park"),
        ("message_holds", "sql holds"),
    ):
        if needle in words or needle in " ".join(text.split()[:12]).lower():
            return name
    return "sql other: " + words[:40]


class TimingCursor:
    """A psycopg2 cursor that times execute and COPY (server + transfer), mogrify and fetch."""

    def __init__(self, cur: Any, phases: Phases) -> None:
        self._cur = cur
        self._phases = phases

    def execute(self, sql: Any, params: Any = None) -> None:
        started = time.perf_counter()
        self._cur.execute(sql, params)
        self._phases.add(_statement_name(sql), time.perf_counter() - started)

    def copy_expert(self, sql: str, file: Any, size: int = 8192) -> None:
        started = time.perf_counter()
        self._cur.copy_expert(sql, file, size=size)
        self._phases.add(_statement_name(sql), time.perf_counter() - started)

    def mogrify(self, sql: Any, params: Any = None) -> bytes:
        started = time.perf_counter()
        result = self._cur.mogrify(sql, params)
        self._phases.seconds["quote parameters (mogrify)"] += time.perf_counter() - started
        return result

    def fetchall(self) -> list:
        started = time.perf_counter()
        rows = self._cur.fetchall()
        self._phases.add("fetch + decode rows", time.perf_counter() - started)
        return rows

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


def instrumented_catch_up(url: str, expected: int) -> tuple[int, float, Phases, Phases]:
    """A copy of run_batch's loop with timers; (events, seconds, batch phases, apply split)."""
    conn = connect(url)
    phases, inner = Phases(), Phases()
    total = 0
    try:
        started = time.perf_counter()
        for _ in range(expected // runner.BATCH_SIZE + 10):
            t0 = time.perf_counter()
            with catchup.collector_paused(), conn.cursor() as cur:
                runner._lock(cur, True)  # also selects the checkpoint row
                txid, position = cur.fetchone()
                t1 = time.perf_counter()
                read = read_after(cur, Cursor(txid, position), runner.BATCH_SIZE)
                t2 = time.perf_counter()
                if not read:
                    conn.rollback()
                    break
                batch = runner.apply_events(TimingCursor(cur, inner), [e for _, e in read])
                t3 = time.perf_counter()
                cursor = read[-1][0]
                cur.execute(
                    "UPDATE checkpoints SET txid = %s, position = %s, updated_at = now()"
                    " WHERE projection = %s",
                    (cursor.txid, cursor.position, PROJECTION),
                )
                t4 = time.perf_counter()
            conn.commit()
            t5 = time.perf_counter()
            total += len(read)
            del batch
            phases.add("lock + checkpoint row", t1 - t0)
            phases.add("read_after (query + decode)", t2 - t1)
            phases.add("apply_events (load + apply + write)", t3 - t2)
            phases.add("checkpoint update", t4 - t3)
            phases.add("commit", t5 - t4)
            phases.batches.append((len(read), t5 - t0))
        return total, time.perf_counter() - started, phases, inner
    finally:
        conn.close()


def reset_projection(url: str) -> None:
    query(
        url,
        "TRUNCATE messages, message_holds, chats, media, feed, feed_heads, parked;"
        " UPDATE checkpoints SET txid = 0, position = 0 WHERE projection = 'messages'",
    )


def projection_counts(url: str) -> dict[str, int]:
    rows = query(
        url,
        "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM chats),"
        " (SELECT count(*) FROM feed), (SELECT count(*) FROM parked),"
        " (SELECT count(*) FROM message_holds),"
        " (SELECT position FROM checkpoints WHERE projection = 'messages')",
    )[0]
    return dict(
        zip(("messages", "chats", "feed", "parked", "holds", "checkpoint"), rows, strict=True)
    )


@dataclass
class CatchUpRun:
    events: int = 0
    load_s: float = 0.0
    ceiling_events: int = 0
    ceiling_s: float = 0.0
    ceiling_first_s: float = 0.0
    straightforward_events: int = 0
    straightforward_s: float = 0.0
    catch_up_events: int = 0
    catch_up_s: float = 0.0
    serial_events: int = 0
    serial_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    instrumented_events: int = 0
    instrumented_s: float = 0.0
    phases: Phases = field(default_factory=Phases)
    inner: Phases = field(default_factory=Phases)
    table_sizes: list[tuple[str, str]] = field(default_factory=list)
    busy_before: float = 0.0
    ceiling_usage: Usage = field(default_factory=Usage)
    straightforward_usage: Usage = field(default_factory=Usage)
    catch_up_usage: Usage = field(default_factory=Usage)
    serial_usage: Usage = field(default_factory=Usage)

    @property
    def rate(self) -> float:
        return self.catch_up_events / self.catch_up_s if self.catch_up_s else 0.0

    @property
    def serial_rate(self) -> float:
        return self.serial_events / self.serial_s if self.serial_s else 0.0

    @property
    def ceiling_rate(self) -> float:
        return self.ceiling_events / self.ceiling_s if self.ceiling_s else 0.0

    @property
    def straightforward_rate(self) -> float:
        if not self.straightforward_s:
            return 0.0
        return self.straightforward_events / self.straightforward_s

    @property
    def over_straightforward(self) -> float:
        return self.rate / self.straightforward_rate if self.straightforward_rate else 0.0

    def calibration(self) -> str:
        """How this machine compares with issue 3's, by both yardsticks."""
        share = TARGET_CATCH_UP / ISSUE_CEILING
        return (
            f"a straightforward projector ran {self.straightforward_rate:,.0f} events/s here"
            f" against about {ISSUE_STRAIGHTFORWARD:,.0f} on issue 3's machine"
            f" ({self.straightforward_rate / ISSUE_STRAIGHTFORWARD:.2f}x), the read ceiling"
            f" {self.ceiling_rate:,.0f} against about {ISSUE_CEILING:,.0f}"
            f" ({self.ceiling_rate / ISSUE_CEILING:.2f}x); so {share:.2f} of this ceiling"
            f" (issue 3's {TARGET_CATCH_UP:,.0f} / {ISSUE_CEILING:,.0f}) would be"
            f" {share * self.ceiling_rate / self.straightforward_rate:.2f}x the straightforward"
            f" projector here, where the issue's figures ask {TARGET_OVER_STRAIGHTFORWARD:.2f}x"
        )

    @property
    def cpu_per_event_us(self) -> float:
        """CPU per event during catch_up: this process and PostgreSQL together."""
        used = self.catch_up_usage.own_s + self.catch_up_usage.postgres_s
        return 1e6 * used / self.catch_up_events if self.catch_up_events else 0.0

    @property
    def all_cores_rate(self) -> float:
        """The rate catch_up's CPU per event allows with every core busy doing only it."""
        cpu = self.cpu_per_event_us
        return (os.cpu_count() or 1) * 1e6 / cpu if cpu else 0.0

    def all_cores_summary(self) -> str:
        return (
            f"catch_up used {self.cpu_per_event_us:.0f} us CPU per event (this process +"
            f" PostgreSQL): with all {os.cpu_count()} cores busy doing nothing else, at most"
            f" {self.all_cores_rate:,.0f} events/s"
        )

    @property
    def instrumented_rate(self) -> float:
        return self.instrumented_events / self.instrumented_s if self.instrumented_s else 0.0

    def breakdown(self) -> list[tuple[str, float, float]]:
        """(part, seconds, share of the instrumented run) for each part of a batch."""
        rows: list[tuple[str, float]] = []
        apply_total = 0.0
        for name, seconds in self.phases.seconds.items():
            if name.startswith("apply_events"):
                apply_total = seconds
                continue
            rows.append((name, seconds))
        inner_sum = 0.0
        for name, seconds in sorted(self.inner.seconds.items(), key=lambda kv: -kv[1]):
            rows.append((f"apply_events: {name}", seconds))
            inner_sum += seconds
        rows.append(
            ("apply_events: Python (projection, json.dumps, the rest)", apply_total - inner_sum)
        )
        total = self.instrumented_s or 1.0
        rows.append(("loop overhead", total - sum(s for _, s in rows)))
        return [(name, s, s / total) for name, s in rows]


def run_catch_up(url: str, spec: Spec, events: int, quiet_s: float) -> CatchUpRun:
    result = CatchUpRun(events=events)
    print(f"catch-up: fresh database {database_name(url)}, loading {events:,} events")
    fresh_database(url)
    result.load_s = load_events(url, spec, events)
    print(f"  loaded in {result.load_s:.1f} s; VACUUM ANALYZE")
    query(url, "VACUUM ANALYZE", autocommit=True)
    checkpoint(url)

    catchup.freeze_start_up_objects()  # as a worker process does when it boots
    result.busy_before = wait_quiet(quiet_s)
    print(f"  machine busy before the timed phases: {result.busy_before:.0%}")
    n, result.ceiling_first_s = read_ceiling(url, events, Usage())
    n2, result.ceiling_s = read_ceiling(url, events, result.ceiling_usage)
    result.ceiling_events = n2
    print(
        f"  ceiling (read_after + decode, batches of 1000): {result.ceiling_rate:,.0f} events/s"
        f" ({n2:,} events in {result.ceiling_s:.2f} s; 2nd pass,"
        f" the 1st took {result.ceiling_first_s:.2f} s)"
    )

    checkpoint(url)
    with measure_usage(result.straightforward_usage):
        result.straightforward_events, result.straightforward_s = project_straightforward(
            url, events
        )
    print(
        f"  straightforward projector (bench/straightforward.py):"
        f" {result.straightforward_rate:,.0f} events/s ({result.straightforward_events:,} events"
        f" in {result.straightforward_s:.2f} s)"
    )
    print(f"  calibration: {result.calibration()}")

    checkpoint(url)
    result.catch_up_events, result.catch_up_s = timed_catch_up(
        url, result.catch_up_usage, overlapped=True
    )
    result.counts = projection_counts(url)
    print(
        f"  catch_up: {result.rate:,.0f} events/s ({result.catch_up_events:,} events in"
        f" {result.catch_up_s:.2f} s) -> {verdict(result.rate >= TARGET_CATCH_UP)}"
        f" (target >= {TARGET_CATCH_UP:,.0f}); catch-up / straightforward ="
        f" {result.over_straightforward:.2f} ->"
        f" {verdict(result.over_straightforward >= TARGET_OVER_STRAIGHTFORWARD)} (target >="
        f" {TARGET_OVER_STRAIGHTFORWARD:.2f}); catch-up / ceiling ="
        f" {result.rate / result.ceiling_rate:.2f}"
    )
    print(f"  after catch-up: {result.counts}")
    print(
        "  CPU during the ceiling's 2nd pass:",
        result.ceiling_usage.describe(result.ceiling_s, n2),
    )
    print(
        "  CPU during catch_up:",
        result.catch_up_usage.describe(result.catch_up_s, result.catch_up_events),
    )
    print(f"  {result.all_cores_summary()}")
    result.table_sizes = [
        (name, size)
        for name, size in query(
            url,
            "SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) FROM pg_class"
            " WHERE relname IN ('events', 'messages', 'chats', 'feed') ORDER BY relname",
        )
    ]

    reset_projection(url)
    query(url, "VACUUM ANALYZE messages, chats, feed, feed_heads, checkpoints", autocommit=True)
    checkpoint(url)
    result.serial_events, result.serial_s = timed_catch_up(
        url, result.serial_usage, overlapped=False
    )
    print(
        f"  catch_up on one connection: {result.serial_rate:,.0f} events/s"
        f" ({result.serial_events:,} events in {result.serial_s:.2f} s);"
        f" CPU: {result.serial_usage.describe(result.serial_s, result.serial_events)}"
    )

    reset_projection(url)
    query(url, "VACUUM ANALYZE messages, chats, feed, feed_heads, checkpoints", autocommit=True)
    checkpoint(url)
    (
        result.instrumented_events,
        result.instrumented_s,
        result.phases,
        result.inner,
    ) = instrumented_catch_up(url, events)
    print(
        f"  instrumented catch-up: {result.instrumented_rate:,.0f} events/s"
        f" ({result.instrumented_events:,} in {result.instrumented_s:.2f} s); where the time goes:"
    )
    for name, seconds, share in result.breakdown():
        per_batch = 1000 * seconds / max(1, result.instrumented_events / runner.BATCH_SIZE)
        print(f"    {share:6.1%}  {seconds:7.2f} s  {per_batch:7.2f} ms/batch  {name}")
    quarters = ", ".join(f"{r:,.0f}" for r in result.phases.rate_by_part())
    print(f"  instrumented events/s by quarter of the run: {quarters}")
    return result


# ---------------------------------------------------------------------------- latency


def ensure_vhost(name: str) -> bool:
    """A RabbitMQ vhost of our own, so no other worker on this broker takes our wake-ups."""
    try:
        listed = subprocess.run(
            ["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, timeout=30, check=True
        )
        if name not in listed.stdout.decode().split():
            subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], timeout=30, check=True)
            subprocess.run(
                ["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
                timeout=30,
                check=True,
            )
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def poller(
    url: str,
    schedule: list[tuple[float, str, str]],
    stop: Any,
    out: Any,
    give_up_s: float,
    hard_deadline: float,
) -> None:
    """In a process of its own: stamp when each scheduled (instance, key id) first shows up."""
    conn = connect(url, autocommit=True)
    seen: dict[str, float] = {}
    cycles: list[float] = []
    queries: list[float] = []
    pending: dict[str, str] = {}  # key id -> instance
    next_index = 0
    scheduled_at = {key_id: t for t, _, key_id in schedule}
    sql = (
        "SELECT m.key_id FROM messages m JOIN unnest(%s::text[], %s::text[]) AS k(i, id)"
        " ON m.instance = k.i AND m.key_id = k.id"
    )
    last_start: float | None = None
    with conn.cursor() as cur:
        while time.monotonic() < hard_deadline:
            now = time.monotonic()
            while next_index < len(schedule) and schedule[next_index][0] <= now:
                _, instance, key_id = schedule[next_index]
                pending[key_id] = instance
                next_index += 1
            for key_id in [k for k in pending if now - scheduled_at[k] > give_up_s]:
                del pending[key_id]
            if stop.is_set() and not pending and next_index >= len(schedule):
                break
            if pending:
                start = time.monotonic()
                cur.execute(sql, (list(pending.values()), list(pending.keys())))
                found = cur.fetchall()
                end = time.monotonic()
                queries.append(end - start)
                if last_start is not None:
                    cycles.append(start - last_start)
                last_start = start
                for (key_id,) in found:
                    # Visible in a snapshot taken at about `start`: committed before it.
                    seen[key_id] = start
                    pending.pop(key_id, None)
            else:
                last_start = None
            time.sleep(POLL_INTERVAL_S)
    conn.close()
    out.send((seen, cycles, queries))
    out.close()


@dataclass
class Sent:
    key_id: str
    scheduled: float
    sent: float = 0.0
    acked: float = 0.0
    status: int = 0
    error: str = ""


def sender(
    port: int, token: str, items: list[tuple[Sent, bytes]], deadline: float, errors: list[str]
) -> None:
    """Post `items` at their scheduled times over one keep-alive connection."""
    conn: http.client.HTTPConnection | None = None
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    for record, body in items:
        if time.monotonic() > deadline:
            record.error = "not sent: past the deadline"
            continue
        delay = record.scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        record.sent = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/webhooks/evolution", body=body, headers=headers)
            answer = conn.getresponse()
            answer.read()
            record.acked = time.monotonic()
            record.status = answer.status
        except (OSError, http.client.HTTPException) as error:
            record.error = f"{type(error).__name__}: {error}"
            errors.append(record.error)
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


@dataclass
class LatencyRun:
    rate: float = 0.0
    seconds: float = 0.0
    posted: int = 0
    acked: int = 0
    measured: int = 0
    negative: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    send_lag_ms: list[float] = field(default_factory=list)
    ack_ms: list[float] = field(default_factory=list)
    poll_cycle_ms: list[float] = field(default_factory=list)
    poll_query_ms: list[float] = field(default_factory=list)
    consumers_before: int | None = None
    consumers_during: int | None = None
    vhost: str = "/"
    busy_before: float = 0.0
    errors: list[str] = field(default_factory=list)
    log_problems: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)


def run_latency(
    url: str, spec: Spec, rate: float, seconds: float, logs: Path, vhost: str, quiet_s: float
) -> LatencyRun:
    result = LatencyRun(rate=rate, seconds=seconds)
    print(
        f"latency: fresh database, web (WEB_CONCURRENCY=2) + worker, {rate:g}/s for {seconds:g} s"
    )
    fresh_database(url)
    # Flush what earlier phases wrote now, not while latencies are being measured.
    checkpoint(url)
    port = free_port()
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "WEBHOOK_TOKEN": token,
        "WEB_CONCURRENCY": "2",
        "PORT": str(port),
    }
    env.pop("RAILWAY_DEPLOYMENT_ID", None)
    env.pop("ZAPLINE_ENV", None)
    if vhost and ensure_vhost(vhost):
        env["RABBITMQ_URL"] = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        result.vhost = vhost
    else:
        print("  no vhost of our own: other workers on this broker may take our wake-ups")
    rabbitmq_url = env.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    result.consumers_before = projections_consumers(rabbitmq_url)
    template = load_template()
    warm = 200
    count = int(rate * seconds)
    bodies = [spec.body(template, n) for n in range(count + warm)]

    worker = Proc("worker", ["worker"], env, logs / "worker.log")
    web: Proc | None = None
    try:
        web = Proc("web", ["web", "--bind", f"127.0.0.1:{port}"], env, logs / "web.log")
        wait_worker(worker)
        wait_healthy(web, port)

        # Warm-up (not measured): connections, pools, the worker's consumer.
        warm_items = [(Sent(k, 0.0), b) for _, k, b in bodies[:warm]]
        start = time.monotonic() + 0.2
        for i, (record, _) in enumerate(warm_items):
            record.scheduled = start + i / 100
        sender(port, token, warm_items, start + 30, result.errors)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if projection_counts(url)["messages"] >= warm:
                break
            time.sleep(0.1)
        time.sleep(1)

        result.busy_before = wait_quiet(quiet_s)
        measured = bodies[warm:]
        t0 = time.monotonic() + 0.5
        records = [Sent(k, t0 + i / rate) for i, (_, k, _) in enumerate(measured)]
        schedule = [
            (r.scheduled, inst, r.key_id) for r, (inst, _, _) in zip(records, measured, strict=True)
        ]
        hard_deadline = t0 + seconds + 40
        ctx = multiprocessing.get_context("fork")
        stop = ctx.Event()
        receive, send = ctx.Pipe(duplex=False)
        poll_proc = ctx.Process(
            target=poller, args=(url, schedule, stop, send, 15.0, hard_deadline), daemon=True
        )
        poll_proc.start()
        send.close()
        threads = []
        for t in range(SENDER_THREADS):
            items = [(records[i], measured[i][2]) for i in range(t, len(records), SENDER_THREADS)]
            thread = threading.Thread(
                target=sender,
                args=(port, token, items, t0 + seconds + 10, result.errors),
                daemon=True,
            )
            threads.append(thread)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(1.0, hard_deadline - time.monotonic()))
        result.consumers_during = projections_consumers(rabbitmq_url)
        stop.set()
        seen, cycles, queries = ({}, [], [])
        if receive.poll(max(1.0, hard_deadline - time.monotonic() + 5)):
            seen, cycles, queries = receive.recv()
        poll_proc.join(timeout=5)
        if poll_proc.is_alive():
            poll_proc.kill()
        result.counts = projection_counts(url)
    finally:
        if web is not None:
            web.stop()
        worker.stop()
    result.log_problems = count_log_problems(logs / "web.log") + count_log_problems(
        logs / "worker.log"
    )

    result.posted = sum(1 for r in records if r.sent)
    acked = [r for r in records if r.status == 200]
    result.acked = len(acked)
    result.send_lag_ms = [1000 * (r.sent - r.scheduled) for r in records if r.sent]
    result.ack_ms = [1000 * (r.acked - r.sent) for r in acked]
    for record in acked:
        if record.key_id in seen:
            latency = 1000 * (seen[record.key_id] - record.acked)
            result.latencies_ms.append(latency)
            result.negative += latency < 0
    result.measured = len(result.latencies_ms)
    result.poll_cycle_ms = [1000 * c for c in cycles]
    result.poll_query_ms = [1000 * q for q in queries]
    print(
        f"  posted {result.posted:,}, 200 {result.acked:,}, measured {result.measured:,}"
        f" (seen before its 200: {result.negative});"
        f" send lag p99 {percentile(result.send_lag_ms, 99):.1f} ms,"
        f" 200 p50/p99 {percentile(result.ack_ms, 50):.1f}/{percentile(result.ack_ms, 99):.1f} ms"
    )
    print(
        f"  poll cycle p50/p99 {percentile(result.poll_cycle_ms, 50):.2f}"
        f"/{percentile(result.poll_cycle_ms, 99):.2f} ms"
        f" (query p50 {percentile(result.poll_query_ms, 50):.2f} ms) = the resolution"
    )
    print(
        f"  200 -> messages row: p50 {result.p50:.1f} ms -> {verdict(result.p50 < TARGET_P50_MS)}"
        f" (< {TARGET_P50_MS:g}), p99 {result.p99:.1f} ms -> {verdict(result.p99 < TARGET_P99_MS)}"
        f" (< {TARGET_P99_MS:g}), max {max(result.latencies_ms, default=float('nan')):.1f} ms"
    )
    if result.errors:
        print(f"  client errors: {len(result.errors)}, first: {result.errors[0]}")
    print(f"  machine busy just before posting: {result.busy_before:.0%}")
    print(f"  after: {result.counts}; warnings/errors in service logs: {result.log_problems}")
    print(
        f"  RabbitMQ vhost {result.vhost!r}: consumers on 'projections' before our worker"
        f" {result.consumers_before if result.consumers_before is not None else 'no queue yet'},"
        f" while it ran {result.consumers_during} (1 = ours only)"
    )
    return result


# ---------------------------------------------------------------------------- report


def postgres_info(url: str) -> str:
    rows = query(
        url,
        "SELECT version(), (SELECT string_agg(name || '=' || setting, ', ' ORDER BY name)"
        " FROM pg_settings WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync',"
        " 'wal_sync_method', 'work_mem'))",
    )
    version, settings = rows[0]
    short = version.split(" on ")[0]
    return f"{short} ({settings}; shared_buffers in 8 kB pages)"


def git_head() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, timeout=10
        )
        return out.stdout.decode().strip()
    return "?"


def render(
    args: argparse.Namespace,
    command: str,
    pg: str,
    catch: CatchUpRun | None,
    lat: LatencyRun | None,
) -> str:
    info = machine()
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        HEADING,
        "",
        f"Run {now} at commit {git_head()}: `{command}`",
        "",
        f"Machine: nproc {info['nproc']} ({info['cpu']}); {pg}; Python {info['python']}."
        " PostgreSQL, the service, the worker and this script share the cores.",
        "",
        "### Targets",
        "",
        "| what | figure | target | |",
        "| --- | --- | --- | --- |",
    ]
    if catch:
        lines += [
            f"| catch-up from checkpoint 0 | {catch.rate:,.0f} events/s | >= {TARGET_CATCH_UP:,.0f}"
            f" | {verdict(catch.rate >= TARGET_CATCH_UP)} |",
            f"| catch-up / a straightforward projector, same run | {catch.over_straightforward:.2f}"
            f" | >= {TARGET_OVER_STRAIGHTFORWARD:.2f} ({TARGET_CATCH_UP:,.0f} / about"
            f" {ISSUE_STRAIGHTFORWARD:,.0f} on issue 3's machine)"
            f" | {verdict(catch.over_straightforward >= TARGET_OVER_STRAIGHTFORWARD)} |",
        ]
    if lat:
        lines += [
            f"| 200 -> messages row, p50 | {lat.p50:.1f} ms | < {TARGET_P50_MS:g} ms"
            f" | {verdict(lat.p50 < TARGET_P50_MS)} |",
            f"| 200 -> messages row, p99 | {lat.p99:.1f} ms | < {TARGET_P99_MS:g} ms"
            f" | {verdict(lat.p99 < TARGET_P99_MS)} |",
        ]
    if catch:
        c = catch
        lines += [
            "",
            "### Catch-up",
            "",
            f"{c.events:,} `messages.upsert` events (the conversation fixture, unique key ids,"
            f" {args.chats:,} chats over {args.instances} instances, increasing timestamps)"
            f" appended in transactions of {LOAD_BATCH} ({c.load_s:.0f} s, not timed), then"
            " `VACUUM ANALYZE` and `CHECKPOINT`.",
            "",
            "| what | events | seconds | events/s |",
            "| --- | --- | --- | --- |",
            f"| ceiling: `read_after` + decode, batches of 1000, nothing applied (2nd of 2 passes)"
            f" | {c.ceiling_events:,} | {c.ceiling_s:.2f} | {c.ceiling_rate:,.0f} |",
            f"| a straightforward projector (`bench/straightforward.py`: messages, chats, feed;"
            f" none of the rest) | {c.straightforward_events:,} | {c.straightforward_s:.2f}"
            f" | {c.straightforward_rate:,.0f} |",
            f"| `catchup.catch_up(conn, planner)` from checkpoint 0, next batch planned while"
            f" the last commits (as the worker runs it) | {c.catch_up_events:,}"
            f" | {c.catch_up_s:.2f} | {c.rate:,.0f} |",
            f"| the same on one connection, batch after batch (projection emptied first)"
            f" | {c.serial_events:,} | {c.serial_s:.2f} | {c.serial_rate:,.0f} |",
            f"| instrumented copy of the loop (projection emptied first) |"
            f" {c.instrumented_events:,} | {c.instrumented_s:.2f} | {c.instrumented_rate:,.0f} |",
            "",
            f"Machine busy just before: {c.busy_before:.0%}. CPU during the ceiling:"
            f" {c.ceiling_usage.describe(c.ceiling_s, c.ceiling_events)}; during the"
            " straightforward projector:"
            f" {c.straightforward_usage.describe(c.straightforward_s, c.straightforward_events)};"
            " during catch_up:"
            f" {c.catch_up_usage.describe(c.catch_up_s, c.catch_up_events)}; on one connection:"
            f" {c.serial_usage.describe(c.serial_s, c.serial_events)} (a machine busier than"
            " this process + PostgreSQL means other work shared the cores).",
            "",
            f"Calibration: {c.calibration()}.",
            "",
            f"Bound: {c.all_cores_summary()}.",
            "",
            f"Catch-up / straightforward = **{c.over_straightforward:.2f}**, catch-up / ceiling ="
            f" {c.rate / c.ceiling_rate:.2f}. After catch-up: "
            + ", ".join(f"{k} {v:,}" for k, v in c.counts.items())
            + "; sizes: "
            + ", ".join(f"{n} {s}" for n, s in c.table_sizes)
            + ".",
            "",
            "Where the time goes (instrumented run; SQL = execute: server time and transfer;"
            " fetch = rows to Python incl. jsonb decode; per batch of"
            f" {runner.BATCH_SIZE:,}):",
            "",
            "| share | seconds | ms/batch | part |",
            "| --- | --- | --- | --- |",
        ]
        batches = max(1, c.instrumented_events / runner.BATCH_SIZE)
        quarters = " / ".join(f"{r:,.0f}" for r in c.phases.rate_by_part())
        lines[-4:-4] = [
            f"Instrumented events/s by quarter of the run: {quarters}.",
            "",
        ]
        for name, seconds, share in c.breakdown():
            lines.append(
                f"| {share:.1%} | {seconds:.2f} | {1000 * seconds / batches:.2f} | {name} |"
            )
    if lat:
        lines += [
            "",
            "### Latency",
            "",
            f"`python -m pipeline web` (WEB_CONCURRENCY=2) and `python -m pipeline worker` on a"
            f" fresh database; 200 warm-up webhooks (not measured), then {lat.rate:g} webhooks/s"
            f" for {lat.seconds:g} s on a fixed schedule from {SENDER_THREADS} threads with"
            " keep-alive connections. A poller process queries the still-pending key ids in"
            f" `messages` every ~{1000 * POLL_INTERVAL_S:g} ms and stamps the start of the"
            " first query that sees each; latency = that stamp - the client's receipt of the 200"
            " (one clock, CLOCK_MONOTONIC). Negative = visible before the 200 arrived.",
            "",
            "| posted | 200 | measured | seen before 200 | p50 ms | p90 ms | p99 ms | max ms"
            " | 200 p50 / p99 ms | send lag p99 ms | poll cycle p50 / p99 ms (resolution) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {lat.posted:,} | {lat.acked:,} | {lat.measured:,} | {lat.negative} |"
            f" {lat.p50:.1f} | {percentile(lat.latencies_ms, 90):.1f} | {lat.p99:.1f} |"
            f" {max(lat.latencies_ms, default=float('nan')):.1f} |"
            f" {percentile(lat.ack_ms, 50):.1f} / {percentile(lat.ack_ms, 99):.1f} |"
            f" {percentile(lat.send_lag_ms, 99):.1f} |"
            f" {percentile(lat.poll_cycle_ms, 50):.2f} / {percentile(lat.poll_cycle_ms, 99):.2f} |",
            "",
            f"Machine busy just before posting: {lat.busy_before:.0%}."
            f" Client errors: {len(lat.errors)}; warning/error lines in service logs:"
            f" {lat.log_problems}. RabbitMQ vhost `{lat.vhost}`; consumers on its"
            f" `projections` queue before our worker started:"
            f" {'no queue yet' if lat.consumers_before is None else lat.consumers_before},"
            f" while it ran: {lat.consumers_during} (1 = ours only).",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--chats", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument(
        "--rabbitmq-vhost",
        default="zapline_bench_projection",
        help="vhost for the wake-ups, created with rabbitmqctl if missing ('' = the default)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before timing, wait up to this long for the machine to be under 25%% busy",
    )
    parser.add_argument("--skip-catch-up", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    args = parser.parse_args()
    if not (0 < args.events <= 5_000_000 and 0 < args.rate <= 5000):
        parser.error("--events must be 1..5,000,000 and --rate 1..5000")
    if not 0 < args.latency_seconds <= 600:
        parser.error("--latency-seconds must be in (0, 600]")
    command = shlex.join([".venv/bin/python", "bench/projection.py", *sys.argv[1:]])
    run = datetime.now(UTC).strftime("B%H%M%S")
    spec = Spec(run=run, chats=args.chats, instances=args.instances)
    pg = postgres_info(with_database(args.database_url, "postgres"))
    print(f"{pg}; nproc {os.cpu_count()}")

    catch = (
        None
        if args.skip_catch_up
        else run_catch_up(args.database_url, spec, args.events, args.wait_quiet)
    )
    lat = None
    if not args.skip_latency:
        with tempfile.TemporaryDirectory(prefix="zapline-bench-projection-") as logs:
            lat = run_latency(
                args.database_url,
                spec,
                args.rate,
                args.latency_seconds,
                Path(logs),
                args.rabbitmq_vhost,
                args.wait_quiet,
            )
            if lat.log_problems:
                keep = Path(tempfile.gettempdir()) / f"zapline-bench-projection-logs-{run}"
                keep.mkdir(exist_ok=True)
                for name in ("web.log", "worker.log"):
                    (keep / name).write_bytes((Path(logs) / name).read_bytes())
                print(f"  service logs kept in {keep}")
    if not args.no_write:
        write_section(HEADING, render(args, command, pg, catch, lat))
        print(f"wrote {RESULTS.relative_to(ROOT)} ({HEADING})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
