"""GET /metrics: Prometheus text format, behind ADMIN_TOKEN.

Request-path metrics (webhooks by outcome, append latency, events appended, WebSocket
clients) are counted in each gunicorn worker; with PROMETHEUS_MULTIPROC_DIR set (pipeline/
web.py sets it) they are kept in files there and summed over every worker at scrape time.
Everything the database or Redis already knows (lag, parked events, media by state, rebuilds,
worker heartbeats and what each worker reports of itself) is read when scraped instead of
being counted in many places; those reads are bounded in time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import falcon
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from api.admin import AdminAuth
from api.ingest import GroupCommitter
from events.pool import Pool
from events.store import Appended
from events.webhook import Webhook
from pipeline import heartbeat, status

log = logging.getLogger("zapline.metrics")

WEBHOOKS = Counter("zapline_webhooks", "Webhook requests answered, by outcome.", ["outcome"])
APPEND_SECONDS = Histogram(
    "zapline_append_seconds",
    "Time a webhook waits for its event to be committed (queue + group commit).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
)
EVENTS_APPENDED = Counter("zapline_events_appended", "Events appended (duplicates excluded).")
# Fed by the live push hub; summed over the live gunicorn workers.
WEBSOCKET_CLIENTS = Gauge(
    "zapline_websocket_clients", "Open WebSocket clients.", multiprocess_mode="livesum"
)

_OUTCOMES = {401: "unauthorized", 413: "too_large", 400: "quarantined", 503: "unavailable"}


class MeasuredCommitter(GroupCommitter):
    """The group committer, timing each webhook's wait and counting new events."""

    def append(self, webhook: Webhook, timeout: float = 20.0) -> Appended:
        started = time.perf_counter()
        try:
            appended = super().append(webhook, timeout)
        finally:
            APPEND_SECONDS.observe(time.perf_counter() - started)
        if not appended.duplicate:
            EVENTS_APPENDED.inc()
        return appended


class WebhookOutcomes:
    """Falcon middleware counting webhook answers by outcome."""

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, succeeded: bool
    ) -> None:
        if not req.path.startswith("/webhooks/"):
            return
        code = int(resp.status_code)
        if code == 200:
            media = resp.media if isinstance(resp.media, dict) else {}
            outcome = "duplicate" if media.get("duplicate") else "stored"
        else:
            outcome = _OUTCOMES.get(code, "error")
        WEBHOOKS.labels(outcome).inc()


class StateCollector:
    """Gauges read from PostgreSQL and Redis when scraped."""

    def __init__(self, pool: Pool, redis: Any) -> None:
        self._pool = pool
        self._redis = redis

    def collect(self) -> Iterator[Metric]:
        # A scrape still answers with what it could read; whether the database figures are
        # in it is a gauge of its own, so an alert on their absence can fire.
        up = GaugeMetricFamily(
            "zapline_database_up", "1 when this scrape read its figures from PostgreSQL."
        )
        try:
            yield from list(self._from_database())
            up.add_metric([], 1)
        except Exception as error:
            log.warning("metrics: database", extra={"fields": {"error": type(error).__name__}})
            up.add_metric([], 0)
        yield up
        redis_up = GaugeMetricFamily(
            "zapline_redis_up", "1 when this scrape read the worker heartbeats from Redis."
        )
        try:
            yield from list(self._from_workers())
            redis_up.add_metric([], 1)
        except Exception as error:
            log.warning("metrics: redis", extra={"fields": {"error": type(error).__name__}})
            redis_up.add_metric([], 0)
        yield redis_up

    def _from_database(self) -> Iterator[Metric]:
        found = status.projections(self._pool)
        lag = GaugeMetricFamily(
            "zapline_projection_lag_events", "Events after the checkpoint.", labels=["projection"]
        )
        lag_s = GaugeMetricFamily(
            "zapline_projection_lag_seconds",
            "Age of the oldest event after the checkpoint.",
            labels=["projection"],
        )
        checkpoint = GaugeMetricFamily(
            "zapline_projection_checkpoint", "Checkpoint position.", labels=["projection"]
        )
        parked = GaugeMetricFamily(
            "zapline_parked_events", "Events a projection could not apply.", labels=["projection"]
        )
        held = GaugeMetricFamily(
            "zapline_held_messages",
            "Messages whose updates wait for the message itself to arrive.",
            labels=["projection"],
        )
        rebuild_done = GaugeMetricFamily(
            "zapline_rebuild_events_done", "Events in the rebuild's shadow.", labels=["projection"]
        )
        rebuilding = GaugeMetricFamily(
            "zapline_rebuild_running", "1 while a rebuild runs.", labels=["projection"]
        )
        head = GaugeMetricFamily("zapline_events_head", "Highest event position.")
        for p in found:
            name = p["projection"]
            lag.add_metric([name], p["lag_events"])
            lag_s.add_metric([name], p["lag_seconds"])
            checkpoint.add_metric([name], p["checkpoint"])
            parked.add_metric([name], p["parked"])
            held.add_metric([name], p["held"])
            rebuild = p.get("rebuild") or {}
            rebuild_done.add_metric([name], rebuild.get("events_done", 0))
            rebuilding.add_metric([name], 1 if rebuild.get("running") else 0)
            head.add_metric([], p["head"])
        yield from (lag, lag_s, checkpoint, parked, held, rebuild_done, rebuilding, head)
        media = GaugeMetricFamily("zapline_media", "Media rows by state.", labels=["state"])
        with self._pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(f"SET LOCAL statement_timeout = '{status.READ_TIMEOUT}'")
            cur.execute("SELECT status, count(*) FROM media GROUP BY status")
            counts = dict(cur.fetchall())
        for state in sorted({"pending", "stored", "failed", *counts}):
            media.add_metric([state], counts.get(state, 0))
        yield media

    def _from_workers(self) -> Iterator[Metric]:
        workers = heartbeat.workers(self._redis)
        now = time.time()
        up = GaugeMetricFamily("zapline_workers", "Workers whose heartbeat is fresh.")
        up.add_metric([], len(workers))
        age = GaugeMetricFamily(
            "zapline_worker_heartbeat_age_seconds",
            "Seconds since a worker's heartbeat.",
            labels=["worker"],
        )
        projected = CounterMetricFamily(
            "zapline_worker_events_projected",
            "Events a worker process has projected since it started (from its heartbeat).",
            labels=["worker"],
        )
        for w in workers:
            worker = str(w.get("id", "?"))
            age.add_metric([worker], round(now - float(w.get("at", now)), 3))
            projected.add_metric([worker], float(w.get("projected", 0)))
        yield from (up, age, projected)


class MetricsResource:
    """GET /metrics: every metric of every web process plus the scrape-time gauges."""

    def __init__(self, auth: AdminAuth, collector: StateCollector, multiprocess: bool) -> None:
        self._auth = auth
        self._collector = collector
        self._multiprocess = multiprocess

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._auth.require(req)
        registry = CollectorRegistry()
        if self._multiprocess:
            MultiProcessCollector(registry)
        else:  # one process (tests through falcon.testing): its own default registry
            registry.register(_Default())
        registry.register(self._collector)
        resp.content_type = CONTENT_TYPE_LATEST
        resp.cache_control = ["no-store"]
        resp.data = generate_latest(registry)


class _Default:
    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
