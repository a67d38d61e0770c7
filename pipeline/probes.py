"""Bounded checks that Redis and RabbitMQ answer, for readiness and status."""

from __future__ import annotations

import pika
import pika.exceptions
import redis

from events.errors import ZaplineError


class DependencyDown(ZaplineError):
    """A dependency did not answer properly."""


class LoginRefused(DependencyDown):
    """RabbitMQ answered but refused our user, password or vhost: configuration, not an
    outage."""


REFUSED_LOGIN = "RabbitMQ refused the login: check the user, password and vhost of RABBITMQ_URL"
REFUSALS = (pika.exceptions.ProbableAccessDeniedError, pika.exceptions.ProbableAuthenticationError)


def check_redis(client: redis.Redis) -> None:
    """PING Redis.

    Raises:
        DependencyDown: it did not answer PONG.
    """
    try:
        client.ping()
    except (redis.RedisError, OSError) as error:
        raise DependencyDown(f"redis: {type(error).__name__}") from error


def check_rabbitmq(url: str, timeout: float = 1.5) -> None:
    """Open and close an AMQP connection (a full handshake, credentials included).

    Raises:
        DependencyDown: the handshake did not complete within `timeout`.
    """
    params = pika.URLParameters(url)
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.blocked_connection_timeout = timeout
    params.connection_attempts = 1
    params.heartbeat = 0
    try:
        pika.BlockingConnection(params).close()
    except REFUSALS as error:
        raise LoginRefused(f"rabbitmq: {type(error).__name__}") from error
    except (TimeoutError, pika.exceptions.AMQPError, OSError) as error:
        raise DependencyDown(f"rabbitmq: {type(error).__name__}") from error


def redis_client(url: str, timeout: float = 1.0) -> redis.Redis:
    """A Redis client whose every call gives up after `timeout` seconds."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def redis_subscriber(url: str) -> redis.Redis:
    """A Redis client for pub/sub: reads may wait long, a dead server is noticed in 30 s."""
    return redis.Redis.from_url(
        url, socket_timeout=30, socket_connect_timeout=2, socket_keepalive=True
    )
