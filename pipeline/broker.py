"""The RabbitMQ broker.

Created at import, the one import-time side effect: dramatiq binds each actor to the global
broker when the actor is declared. Nothing connects until a message is sent or consumed.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from pipeline.config import Settings

# Retried messages wait unacked in worker memory; RabbitMQ closes a channel holding one past
# its consumer_timeout (30 min by default), so no delay may come near it (dramatiq #827).
MAX_BACKOFF_MS = 10 * 60 * 1000


def create_broker(settings: Settings) -> RabbitmqBroker:
    """A broker with publisher confirms and retry delays kept below consumer_timeout."""
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=10 * 60 * 1000),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=8, min_backoff=2_000, max_backoff=MAX_BACKOFF_MS),
    ]
    return RabbitmqBroker(url=settings.rabbitmq_url, confirm_delivery=True, middleware=middleware)


broker = create_broker(Settings.from_env())
dramatiq.set_broker(broker)
