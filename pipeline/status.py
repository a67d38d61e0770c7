"""What `python -m pipeline status` reports: projections, lag, parked events, workers, queues."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pika
import pika.exceptions

from events.pool import Pool
from pipeline import heartbeat, probes
from pipeline.config import Settings
from projections import media
from projections.rebuild import is_running

QUEUES = ("projections", "media", "rebuilds")


# How long status reads may take (metrics scrapes too: Prometheus gives up after 10 s).
READ_TIMEOUT = "3s"


def projections(pool: Pool) -> list[dict[str, Any]]:
    """Checkpoint, head, lag in events and seconds, parked count of every projection, and the
    updates held for messages that have not arrived (messages projection).

    Bounded: a database that holds these reads up (a lock, an overload) fails them within a
    few seconds rather than holding up a scrape or an operator.
    """
    with pool.connection() as conn, conn, conn.cursor() as cur:
        cur.execute(f"SET LOCAL statement_timeout = '{READ_TIMEOUT}'")
        cur.execute("SELECT coalesce(max(position), 0) FROM events")
        head = int(cur.fetchone()[0])
        cur.execute(
            "SELECT c.projection, c.txid, c.position, c.updated_at,"
            " (SELECT count(*) FROM events e"
            "   WHERE (e.txid, e.position) > (c.txid::text::xid8, c.position)),"
            " (SELECT min(e.received_at) FROM events e"
            "   WHERE (e.txid, e.position) > (c.txid::text::xid8, c.position)),"
            " (SELECT count(*) FROM parked p WHERE p.projection = c.projection)"
            " FROM checkpoints c ORDER BY c.projection"
        )
        rows = cur.fetchall()
        rebuilds = {row["projection"]: row for row in _rebuilds(cur)}
        cur.execute("SELECT count(*), min(since) FROM message_holds")
        held, held_since = cur.fetchone()
    now = datetime.now(UTC)
    return [
        {
            "projection": name,
            "checkpoint": position,
            "head": head,
            "lag_events": lag,
            "lag_seconds": _age(now, oldest),
            "parked": parked,
            # Updates, edits, reactions waiting for a message that has not arrived (yet).
            "held": held if name == "messages" else 0,
            "held_oldest_seconds": _age(now, held_since) if name == "messages" else 0.0,
            "checkpoint_moved_at": moved.isoformat(),
            "rebuild": rebuilds.get(name) or _never_rebuilt(name),
        }
        for name, _txid, position, moved, lag, oldest, parked in rows
    ]


def _age(now: datetime, since: datetime | None) -> float:
    return round((now - since).total_seconds(), 3) if since else 0.0


def _never_rebuilt(name: str) -> dict[str, Any]:
    """The rebuild state of a projection nobody has rebuilt: the same shape, state "none"."""
    fields = ("summary", "error", "requested_at", "started_at", "finished_at")
    return {
        "projection": name,
        "state": "none",
        "running": False,
        "events_done": 0,
        "events_total": 0,
        "rate_per_second": None,
        "eta_seconds": None,
        "dry_run": False,
        **dict.fromkeys(fields),
    }


def _rebuilds(cur: Any) -> list[dict[str, Any]]:
    """The latest rebuild of each projection, with its latest run's rate, and ETA while it
    builds."""
    cur.execute(
        "SELECT projection, state, events_done, events_total, dry_run, summary, error,"
        " requested_at, started_at, updated_at, finished_at,"
        " coalesce(run_started_at, started_at), run_from FROM rebuilds"
    )
    found = []
    for row in cur.fetchall():
        name, state, done, total, dry_run, summary, error = row[:7]
        requested, started, moved, ended, run_started, run_from = row[7:]
        running = is_running(cur, name)
        if state == "building" and not running:
            state = "interrupted"  # resumed by the next rebuild of the same code
        seconds = (
            (moved - run_started).total_seconds() if run_started and state != "requested" else 0
        )
        rate = (done - run_from) / seconds if seconds > 0 else None
        found.append(
            {
                "projection": name,
                "state": state,
                "running": running,
                "events_done": done,
                "events_total": max(total, done),
                "rate_per_second": round(rate, 1) if rate else None,
                "eta_seconds": round(max(total - done, 0) / rate, 1)
                if rate and state == "building"
                else None,
                "dry_run": dry_run,
                "summary": summary,
                "error": error,
                "requested_at": requested.isoformat() if requested else None,
                "started_at": started.isoformat() if started else None,
                "finished_at": ended.isoformat() if ended else None,
            }
        )
    return found


def queue_depths(url: str) -> tuple[dict[str, int | None], str | None]:
    """Messages waiting in each queue, and why RabbitMQ could not be asked (then all None)."""
    params = pika.URLParameters(url)
    params.socket_timeout = params.stack_timeout = 3
    params.connection_attempts = 1
    try:
        connection = pika.BlockingConnection(params)
    except probes.REFUSALS:
        return dict.fromkeys(QUEUES), probes.REFUSED_LOGIN
    except (pika.exceptions.AMQPError, OSError):
        return dict.fromkeys(QUEUES), "RabbitMQ did not answer"
    depths: dict[str, int | None] = {}
    try:
        channel = connection.channel()
        for queue in QUEUES:
            try:
                declared = channel.queue_declare(queue, passive=True)
                depths[queue] = int(declared.method.message_count)
            except pika.exceptions.ChannelClosedByBroker:  # not declared yet: nothing waits
                depths[queue] = 0
                channel = connection.channel()
    finally:
        connection.close()
    return depths, None


def gather(settings: Settings) -> dict[str, Any]:
    """Everything status shows, as one JSON-ready dict."""
    pool = Pool(settings.database_url, size=1)
    try:
        found = projections(pool)
        with pool.connection() as conn:
            media_states = media.counts(conn)
            media_reasons = media.reasons(conn)
    finally:
        pool.close()
    try:
        workers: list[dict[str, Any]] | None = heartbeat.workers(
            probes.redis_client(settings.redis_url)
        )
    except Exception:  # Redis down: say so rather than fail the whole report
        workers = None
    queues, queues_error = queue_depths(settings.rabbitmq_url)
    return {
        "projections": found,
        "media": media_states,
        "media_reasons": media_reasons,
        "workers": workers,
        "queues": queues,
        "queues_error": queues_error,
    }


def render(report: dict[str, Any]) -> str:
    """The report for a person."""
    lines = []
    for p in report["projections"]:
        lines.append(
            f"projection {p['projection']}: checkpoint {p['checkpoint']}, head {p['head']},"
            f" lag {p['lag_events']} events / {p['lag_seconds']:.1f} s, parked {p['parked']},"
            f" held {p['held']}"
            + (f" (oldest {p['held_oldest_seconds']:.0f} s)" if p["held"] else "")
        )
        rebuild = p["rebuild"]
        if rebuild["state"] != "none":
            lines.append(
                f"  rebuild: {rebuild['state']}, {rebuild['events_done']}"
                f"/{rebuild['events_total']} events"
            )
    states = report["media"]
    lines.append(
        f"media: {states['pending']} pending, {states['stored']} stored, {states['failed']} failed"
        + (" (retry: python -m pipeline replay --media-failed)" if states["failed"] else "")
    )
    for found in report["media_reasons"]:
        reason = " ".join(found["reason"].split())[:200]  # one line, whatever the error said
        lines.append(f"  {found['count']} {found['status']}: {reason}")
    workers = report["workers"]
    if workers is None:
        lines.append("workers: unknown (Redis did not answer)")
    else:
        # The id /metrics labels the worker with (host-pid-suffix).
        names = ", ".join(sorted(str(w.get("id", "?")) for w in workers)) or "none"
        lines.append(f"workers: {len(workers)} ({names})")
    for queue, depth in report["queues"].items():
        shown = f"unknown ({report['queues_error']})" if depth is None else f"{depth} waiting"
        lines.append(f"queue {queue}: {shown}")
    return "\n".join(lines)
