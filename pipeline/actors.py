"""Dramatiq actors: thin wrappers over plain functions. Every one is safe to run twice."""

from __future__ import annotations

import dramatiq

from pipeline.broker import broker
from pipeline.worker import WorkerRuntime, runtime

PROJECTIONS_QUEUE = "projections"

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
