"""Settings.from_env(): the only place that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from events.errors import ConfigError

DEFAULTS = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/zapline",
    "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "PORT": "8000",
    "MAX_BODY_BYTES": str(64 * 1024 * 1024),
    "MEDIA_DIR": "./var/media",
    "WEB_CONCURRENCY": "2",
    "WEB_WORKER_CONNECTIONS": "10000",
    "WORKER_PROCESSES": "1",
    "WORKER_THREADS": "8",
    "MEDIA_MAX_ATTEMPTS": "8",
    "MEDIA_MIN_BACKOFF_MS": "5000",
    "MEDIA_MAX_BACKOFF_MS": str(10 * 60 * 1000),
    "MEDIA_URL_SECONDS": "300",
    "EVOLUTION_TIMEOUT_SECONDS": "60",
}
# Delayed retries wait unacked in worker memory; RabbitMQ closes a channel holding one past
# its consumer_timeout (30 min by default), so the longest delay stays well below it.
MEDIA_MAX_BACKOFF_LIMIT_MS = 25 * 60 * 1000
REQUIRED_IN_PRODUCTION = ("WEBHOOK_TOKEN", "API_TOKENS", "ADMIN_TOKEN")


@dataclass(frozen=True)
class Settings:
    """Everything Zapline is told by its environment (contract section 2)."""

    database_url: str = DEFAULTS["DATABASE_URL"]
    rabbitmq_url: str = DEFAULTS["RABBITMQ_URL"]
    redis_url: str = DEFAULTS["REDIS_URL"]
    port: int = 8000
    webhook_token: str | None = None
    webhook_jwt_secret: str | None = None
    # token -> the instances it may read; "*" means all.
    api_tokens: Mapping[str, frozenset[str]] = field(default_factory=dict)
    admin_token: str | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    media_dir: str = DEFAULTS["MEDIA_DIR"]
    evolution_api_url: str | None = None
    evolution_api_key: str | None = None
    evolution_timeout_seconds: int = 60
    media_max_attempts: int = 8
    media_min_backoff_ms: int = 5000
    media_max_backoff_ms: int = 10 * 60 * 1000
    media_url_seconds: int = 300
    web_concurrency: int = 2
    web_worker_connections: int = 10000
    worker_processes: int = 1
    worker_threads: int = 8
    # Browser origins (scheme://host[:port]) allowed to call the API from their pages; "*"
    # any; none by default (a front end on the same origin needs none).
    cors_origins: tuple[str, ...] = ()
    # Where gunicorn workers keep their metrics for /metrics to sum (pipeline/web.py sets it).
    prometheus_multiproc_dir: str | None = None
    production: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and check every variable at once.

        Raises:
            ConfigError: naming every missing or malformed variable.
        """
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or DEFAULTS.get(name)

        def number(name: str, low: int, high: int) -> int:
            raw = get(name) or ""
            if raw.isdigit() and low <= int(raw) <= high:
                return int(raw)
            problems.append(f"{name} must be a whole number from {low} to {high} (got {raw!r})")
            return low

        def url(name: str, schemes: tuple[str, ...]) -> str:
            value = get(name) or ""
            parts = urlsplit(value)
            if parts.scheme not in schemes or not parts.hostname:
                problems.append(f"{name} must be a {'/'.join(schemes)} URL with a host")
            return value

        def optional_url(name: str) -> str | None:
            value = get(name)
            if value is not None:
                parts = urlsplit(value)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    problems.append(f"{name} must be an http/https URL with a host")
            return value

        production = (
            bool(env.get("RAILWAY_DEPLOYMENT_ID")) or env.get("ZAPLINE_ENV") == "production"
        )
        if production:
            problems += [
                f"{n} is required in production" for n in REQUIRED_IN_PRODUCTION if not get(n)
            ]
        settings = cls(
            database_url=url("DATABASE_URL", ("postgresql", "postgres")),
            rabbitmq_url=url("RABBITMQ_URL", ("amqp", "amqps")),
            redis_url=url("REDIS_URL", ("redis", "rediss")),
            port=number("PORT", 1, 65535),
            webhook_token=get("WEBHOOK_TOKEN"),
            webhook_jwt_secret=get("WEBHOOK_JWT_SECRET"),
            api_tokens=_api_tokens(get("API_TOKENS") or "", problems),
            admin_token=get("ADMIN_TOKEN"),
            max_body_bytes=number("MAX_BODY_BYTES", 1024, 2**31),
            s3_bucket=get("S3_BUCKET"),
            s3_endpoint_url=optional_url("S3_ENDPOINT_URL"),
            s3_region=get("S3_REGION"),
            aws_access_key_id=get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
            media_dir=get("MEDIA_DIR") or DEFAULTS["MEDIA_DIR"],
            evolution_api_url=optional_url("EVOLUTION_API_URL"),
            evolution_api_key=get("EVOLUTION_API_KEY"),
            evolution_timeout_seconds=number("EVOLUTION_TIMEOUT_SECONDS", 1, 600),
            media_max_attempts=number("MEDIA_MAX_ATTEMPTS", 1, 50),
            media_min_backoff_ms=number("MEDIA_MIN_BACKOFF_MS", 1, MEDIA_MAX_BACKOFF_LIMIT_MS),
            media_max_backoff_ms=number("MEDIA_MAX_BACKOFF_MS", 1, MEDIA_MAX_BACKOFF_LIMIT_MS),
            media_url_seconds=number("MEDIA_URL_SECONDS", 10, 3600),
            web_concurrency=number("WEB_CONCURRENCY", 1, 64),
            web_worker_connections=number("WEB_WORKER_CONNECTIONS", 10, 100_000),
            worker_processes=number("WORKER_PROCESSES", 1, 64),
            worker_threads=number("WORKER_THREADS", 1, 256),
            prometheus_multiproc_dir=get("PROMETHEUS_MULTIPROC_DIR"),
            cors_origins=_origins(get("CORS_ORIGINS") or "", problems),
            production=production,
        )
        if problems:
            raise ConfigError("bad configuration: " + "; ".join(problems))
        return settings


def _api_tokens(raw: str, problems: list[str]) -> dict[str, frozenset[str]]:
    """Parse `token1:instanceA|instanceB,token2:*`."""
    tokens: dict[str, frozenset[str]] = {}
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        token, sep, instances = entry.partition(":")
        names = frozenset(filter(None, (n.strip() for n in instances.split("|"))))
        if not sep or not token.strip() or not names:
            problems.append(
                "API_TOKENS entries must look like token:instanceA|instanceB or token:*"
            )
            return {}
        tokens[token.strip()] = names
    return tokens


def _origins(raw: str, problems: list[str]) -> tuple[str, ...]:
    """Parse `https://crm.example.com,http://localhost:5173` (or `*`)."""
    origins = tuple(filter(None, (part.strip().rstrip("/") for part in raw.split(","))))
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (
            parts.scheme not in ("http", "https") or not parts.hostname or parts.path
        ):
            problems.append(
                f"CORS_ORIGINS entries must be * or scheme://host[:port] (got {origin!r})"
            )
            return ()
    return origins
