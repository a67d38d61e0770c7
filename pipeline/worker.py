"""The worker process's lifetime: the projector thread, heartbeats, graceful shutdown."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import dramatiq

from events.pool import Pool
from events.store import Cursor
from pipeline import fanout, heartbeat, logs, probes
from pipeline.config import Settings
from pipeline.evolution import EvolutionMedia
from pipeline.media import storage_from
from pipeline.media_jobs import MediaJobs
from projections import catchup, media
from projections.feed import prune_feed
from projections.tables import Batch

log = logging.getLogger("zapline.worker")

# Without any wake-up, a new event is projected within this many seconds.
POLL_SECONDS = 2.0
PRUNE_EVERY_SECONDS = 600.0
SWEEP_EVERY_SECONDS = 60.0
# On SIGTERM the projector first gets STOP_SECONDS to finish its batch (dramatiq's
# before_worker_shutdown), then dramatiq waits this long for running actors; a batch is one
# transaction, so an exit mid-way rolls it back. Railway's drainingSeconds for the worker
# (pipeline/railway.json) must exceed the sum.
SHUTDOWN_TIMEOUT_MS = 15_000
STOP_SECONDS = 10.0

SendMedia = Callable[[Settings, Iterable[int]], None]


class Projector:
    """Catches the projection up in a thread of its own, on wake-up and every POLL_SECONDS."""

    def __init__(self, settings: Settings, worker_id: str, send_media: SendMedia) -> None:
        self._settings = settings
        self._send_media = send_media
        self._pool = Pool(settings.database_url, size=2)
        self._redis = probes.redis_client(settings.redis_url)
        self._publish = fanout.Publisher(self._redis, settings.database_url)
        self._worker_id = worker_id
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zapline-projector", daemon=True)
        self._last_beat = 0.0
        self._last_prune = 0.0
        self._last_sweep = 0.0
        self.checkpoint = Cursor()
        self.projected = 0

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Ask for a catch-up now."""
        self._wake.set()

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Finish the batch in progress, then stop."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        with contextlib.suppress(Exception):  # Redis may be gone; the key expires anyway
            heartbeat.forget(self._redis, self._worker_id)
        self._pool.close()

    def _run(self) -> None:
        self._beat(force=True)
        while not self._stop.is_set():
            try:
                with self._pool.connection() as conn, self._pool.connection() as planner:
                    catchup.catch_up(
                        conn,
                        planner,
                        should_stop=self._stop.is_set,
                        after_commit=self._after_commit,
                    )
                    self._prune(conn)
                    self._sweep(conn)
            except Exception:
                log.exception("catch-up failed; retrying")
                self._stop.wait(1.0)
            # After the catch-up, not before: a wake-up should reach the database first.
            self._beat(force=True)
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _after_commit(self, batch: Batch) -> None:
        self.checkpoint = batch.cursor
        self.projected += batch.events
        try:
            self._publish(batch.feed)
        except Exception as error:  # clients fill the gap from the feed table
            log.warning("fan-out failed", extra={"fields": {"error": type(error).__name__}})
        self._queue_media(batch.new_media)
        self._beat()

    def _queue_media(self, media_ids: list[int]) -> None:
        if not media_ids:
            return
        try:
            self._send_media(self._settings, media_ids)
        except Exception as error:  # broker down: the sweep sends them later
            log.warning(
                "could not queue media",
                extra={"fields": {"media": len(media_ids), "error": type(error).__name__}},
            )

    def _sweep(self, conn: Any) -> None:
        """Queue pending media nothing has tried for longer than the longest retry delay.

        Their message was lost (the broker was down after the batch committed), or they wait
        for a source that may be configured by now.
        """
        if time.monotonic() - self._last_sweep < SWEEP_EVERY_SECONDS:
            return
        self._last_sweep = time.monotonic()
        self._queue_media(media.stale(conn, idle_seconds=sweep_idle_seconds(self._settings)))

    def _prune(self, conn: Any) -> None:
        if time.monotonic() - self._last_prune > PRUNE_EVERY_SECONDS:
            self._last_prune = time.monotonic()
            removed = prune_feed(conn)
            if removed:
                log.info("pruned feed", extra={"fields": {"rows": removed}})

    def _beat(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_beat < POLL_SECONDS:
            return
        self._last_beat = time.monotonic()
        info = {
            "id": self._worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "checkpoint": self.checkpoint.position,
            "projected": self.projected,
        }
        try:
            heartbeat.beat(self._redis, self._worker_id, info)
        except Exception as error:  # Redis down: the worker goes on; readiness will say so
            log.warning("heartbeat failed", extra={"fields": {"error": type(error).__name__}})


class Runtime:
    """What one worker process holds."""

    def __init__(self, settings: Settings, send_media: SendMedia) -> None:
        self.settings = settings
        # Set at shutdown: long actors (a rebuild) stop at their next safe point.
        self.stopping = threading.Event()
        self.projector = Projector(
            settings, f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}", send_media
        )
        evolution = None
        if settings.evolution_api_url:
            evolution = EvolutionMedia(
                settings.evolution_api_url,
                settings.evolution_api_key,
                settings.evolution_timeout_seconds,
            )
        self.media = MediaJobs(
            Pool(settings.database_url, size=settings.worker_threads),
            storage_from(settings),
            evolution,
            max_attempts=settings.media_max_attempts,
            publish=fanout.Publisher(
                probes.redis_client(settings.redis_url), settings.database_url
            ),
        )


_RUNTIME: Runtime | None = None


def sweep_idle_seconds(settings: Settings) -> float:
    """How long a pending media waits untried before the sweep queues it again: longer than
    any retry delay, so a retry in flight is not doubled."""
    return settings.media_max_backoff_ms / 1000 + 5 * 60


def runtime() -> Runtime | None:
    """This process's runtime, once the worker has booted."""
    return _RUNTIME


class WorkerRuntime(dramatiq.Middleware):
    """Starts the projector when a worker process boots and stops it on shutdown."""

    def __init__(self, send_media: SendMedia) -> None:
        self._send_media = send_media

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        global _RUNTIME
        logs.configure()
        _RUNTIME = Runtime(Settings.from_env(), self._send_media)
        catchup.freeze_start_up_objects()
        _RUNTIME.projector.start()
        _RUNTIME.projector.wake()  # catch up at start (design.md invariant 6)
        log.info("worker started", extra={"fields": {"pid": os.getpid()}})

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if _RUNTIME is not None:
            _RUNTIME.stopping.set()
            _RUNTIME.projector.stop()
            log.info("projector stopped", extra={"fields": {"pid": os.getpid()}})
