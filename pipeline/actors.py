"""Dramatiq actors: thin wrappers over plain functions. Every one is safe to run twice."""

from __future__ import annotations

import dramatiq

from pipeline.broker import broker
from pipeline.worker import WorkerRuntime, runtime

PROJECTIONS_QUEUE = "projections"
REBUILDS_QUEUE = "rebuilds"

broker.add_middleware(WorkerRuntime())


@dramatiq.actor(queue_name=PROJECTIONS_QUEUE, max_retries=0)
def project_messages() -> None:
    """Wake this process's projector, which catches up from the checkpoint.

    The message carries no data: it is a doorbell. Ringing twice, late or never changes
    nothing but latency; the projector also polls on its own (design.md invariant 6).
    """
    current = runtime()
    if current is not None:
        current.projector.wake()


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
