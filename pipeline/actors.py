"""Dramatiq actors: thin wrappers over plain functions. Every one is safe to run twice."""

from __future__ import annotations

from collections.abc import Iterable

import dramatiq
import pika.exceptions

from events.errors import MediaRejected, MediaUnavailable
from pipeline.broker import broker
from pipeline.config import Settings
from pipeline.worker import WorkerRuntime, runtime

PROJECTIONS_QUEUE = "projections"
MEDIA_QUEUE = "media"
REBUILDS_QUEUE = "rebuilds"


@dramatiq.actor(queue_name=PROJECTIONS_QUEUE, max_retries=0)
def project_messages() -> None:
    """Wake this process's projector, which catches up from the checkpoint.

    The message carries no data: it is a doorbell. Ringing twice, late or never changes
    nothing but latency; the projector also polls on its own (design.md invariant 6).
    """
    current = runtime()
    if current is not None:
        current.projector.wake()


def ring_projector() -> None:
    """Send a wake-up unless one is already waiting in the queue.

    While no worker runs, every commit would otherwise leave one more doorbell behind (a
    day's outage, millions); one waiting is enough, and a starting worker catches up anyway.
    """
    try:
        waiting = broker.channel.queue_declare(PROJECTIONS_QUEUE, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker:  # the queue is not declared yet
        del broker.channel
        waiting = 0
    if not waiting:
        project_messages.send()


# The media row counts attempts and fails itself after the last one (pipeline/media_jobs.py);
# Dramatiq's own limit only has to be higher. A rejection is final at once.
@dramatiq.actor(queue_name=MEDIA_QUEUE, max_retries=60, throws=(MediaRejected,))
def store_media(media_id: int) -> None:
    """Take a pending media to stored; transient failures raise, so Dramatiq retries."""
    current = runtime()
    if current is None:
        raise MediaUnavailable("the worker has not booted yet")
    current.media.store(media_id)


def send_store_media(settings: Settings, media_ids: Iterable[int]) -> None:
    """Queue store_media for each media, with the configured backoff and attempt limit."""
    for media_id in media_ids:
        store_media.send_with_options(
            args=(media_id,),
            max_retries=settings.media_max_attempts + 2,
            min_backoff=settings.media_min_backoff_ms,
            max_backoff=settings.media_max_backoff_ms,
        )


broker.add_middleware(WorkerRuntime(send_store_media))


# Longer than a run (pipeline/rebuilds.py WORKER_RUN_SECONDS), shorter than RabbitMQ's
# consumer_timeout (30 min): the message stays unacked while it runs.
@dramatiq.actor(queue_name=REBUILDS_QUEUE, max_retries=3, time_limit=25 * 60 * 1000)
def rebuild_projection(name: str) -> None:
    """Run or resume a rebuild for a bounded time, then send itself again if not done.

    Safe twice: a second copy finds the rebuild lock taken and returns, and every run resumes
    from the shadow's checkpoint.
    """
    from pipeline import rebuilds

    current = runtime()
    if current is None:
        return
    state = rebuilds.run_in_worker(current.settings, name, current.stopping.is_set)
    if state == "paused":
        rebuild_projection.send(name)
