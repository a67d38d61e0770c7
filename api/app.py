"""create_app(settings, ...) wires the Falcon app; get_app() builds it from the environment."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon
import gevent

from api.admin import (
    AdminAuth,
    BadAdminToken,
    Conflict,
    ProjectionsResource,
    RebuildResource,
    UnknownProjection,
)
from api.auth import Unauthorized, WebhookAuth
from api.guards import RejectNul
from api.health import HealthResource, Lifecycle, ReadyResource
from api.ingest import GroupCommitter
from api.live import Hub, LiveResource, UpgradeRequired
from api.media import MediaNotStored, MediaResource
from api.metrics import MeasuredCommitter, MetricsResource, StateCollector, WebhookOutcomes
from api.openapi import OpenApiResource
from api.reads import BadQuery, add_read_routes
from api.requestlog import RequestLog
from api.server import WS_PATH
from api.tokens import ApiAuth, BadApiToken, NotFound
from api.webhooks import BodyTooLarge, WebhookResource
from events.errors import (
    BadWebhook,
    MediaUnavailable,
    StoreRejected,
    StoreUnavailable,
    ZaplineError,
)
from events.pool import Pool
from events.store import EventStore
from migrations import runner as migrations
from pipeline import heartbeat, logs, probes
from pipeline.actors import rebuild_projection, ring_projector
from pipeline.broker import broker
from pipeline.config import Settings
from pipeline.media import MediaStorage, storage_from
from pipeline.wakeup import WakeUps

log = logging.getLogger("zapline.api")

# Group-commit writer greenlets (and their connections) per web process.
WRITERS = 2
# How long Evolution (and any sender) should wait before retrying a 503.
RETRY_AFTER_SECONDS = "5"


@dataclass(frozen=True)
class Services:
    """The collaborators a web process needs, made after fork."""

    pool: Pool
    store: EventStore
    committer: GroupCommitter
    lifecycle: Lifecycle
    hub: Hub
    storage: MediaStorage


def create_app(settings: Settings, services: Services) -> falcon.App:
    """Wire resources, middleware and the one error-handler table."""
    middleware: list[Any] = [RequestLog(), WebhookOutcomes(), RejectNul()]
    if settings.cors_origins:
        # Answers preflights, and lets the allowed origins read answers, errors included.
        allowed = "*" if "*" in settings.cors_origins else list(settings.cors_origins)
        middleware.append(
            falcon.CORSMiddleware(allow_origins=allowed, expose_headers=["Retry-After"])
        )
    app = falcon.App(middleware=middleware)
    app.req_options.auto_parse_form_urlencoded = False
    webhooks = WebhookResource(
        WebhookAuth(settings.webhook_token, settings.webhook_jwt_secret),
        services.committer,
        services.store,
        settings.max_body_bytes,
    )
    app.add_route("/webhooks/evolution", webhooks)
    app.add_route("/webhooks/evolution/{suffix}", webhooks)
    redis = probes.redis_client(settings.redis_url)
    app.add_route("/health", HealthResource(services.store.ping, services.lifecycle))
    app.add_route(
        "/health/ready",
        ReadyResource(
            checks={
                "database": services.store.ping,
                "redis": lambda: probes.check_redis(redis),
                "rabbitmq": lambda: probes.check_rabbitmq(settings.rabbitmq_url),
                "migrations": lambda: _migrations_at_head(services.pool),
            },
            info={
                "workers": lambda: _workers_seen(redis),
                "projection_lag_seconds": lambda: _lag_seconds(services.pool),
            },
            lifecycle=services.lifecycle,
        ),
    )
    add_read_routes(app, settings.api_tokens, services.pool)
    app.add_static_route("/static", str(STATIC))
    app.add_route("/", PageResource())
    app.add_route(
        WS_PATH,
        LiveResource(ApiAuth(settings.api_tokens), services.hub, services.pool, services.lifecycle),
    )
    app.add_route(
        "/api/media/{media_id}",
        MediaResource(ApiAuth(settings.api_tokens), services.pool, services.storage),
    )
    admin = AdminAuth(settings.admin_token)
    app.add_route("/admin/projections", ProjectionsResource(admin, services.pool))
    app.add_route(
        "/admin/projections/{name}/rebuild", RebuildResource(admin, services.pool, _send_rebuild)
    )
    app.add_route(
        "/metrics",
        MetricsResource(
            admin,
            StateCollector(services.pool, redis),
            multiprocess=settings.prometheus_multiproc_dir is not None,
        ),
    )
    app.add_route("/openapi.json", OpenApiResource(admin))
    app.add_error_handler(Exception, _unexpected)
    for error, status in _ERRORS.items():
        app.add_error_handler(error, _handler(status))
    app.set_error_serializer(_framework_error)
    return app


def _framework_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """falcon's own errors (no such route, a method a route lacks) in our one error shape."""
    resp.content_type = falcon.MEDIA_JSON  # whatever the resource had set before it failed
    resp.media = {"error": error.description or error.title}


def create_services(settings: Settings, lifecycle: Lifecycle | None = None) -> Services:
    """Make the pool, store and committer of one web process."""

    def drop_connection() -> None:
        del broker.connection

    pool = Pool(settings.database_url, size=8, statement_timeout_ms=15_000)
    store = EventStore(pool)
    # The webhook writers get connections of their own: a storm of readers or sockets
    # waiting for the shared pool must never delay an acknowledgement.
    writers = EventStore(Pool(settings.database_url, size=WRITERS, statement_timeout_ms=15_000))
    wakeups = WakeUps(ring_projector, drop_connection)
    committer = MeasuredCommitter(writers.append, writers=WRITERS, on_commit=wakeups.notify)
    lifecycle = lifecycle or Lifecycle()
    hub = Hub(probes.redis_subscriber(settings.redis_url), pool)
    lifecycle.on_drain.append(hub.close_all)
    return Services(pool, store, committer, lifecycle, hub, storage_from(settings))


def get_app() -> falcon.App:
    """The gunicorn entry point: called once in every worker process, after fork."""
    from psycogreen.gevent import patch_psycopg

    # psycopg2 blocks the whole gevent loop unless told to wait through gevent.
    patch_psycopg()
    logs.configure()
    settings = Settings.from_env()
    return create_app(settings, create_services(settings, LIFECYCLE))


class BrokerUnavailable(ZaplineError):
    """RabbitMQ did not take a message the request needs sent."""


def _send_rebuild(name: str) -> None:
    """Send the rebuild to the worker from this request greenlet.

    Dramatiq keeps its connection greenlet-local under gevent, so a send from a request
    greenlet opens one; rebuild requests are rare, so it is closed right after.

    Raises:
        BrokerUnavailable: the message was not confirmed within 5 s.
    """
    try:
        with gevent.Timeout(5):
            rebuild_projection.send(name)
    except BaseException as error:
        if isinstance(error, gevent.GreenletExit):
            raise
        raise BrokerUnavailable(f"rebuild not sent: {type(error).__name__}") from None
    finally:
        with contextlib.suppress(Exception):
            del broker.connection


# Flipped to draining by the gunicorn worker's SIGTERM handler (api/server.py).
LIFECYCLE = Lifecycle()

STATIC = Path(__file__).resolve().parent / "static"


class PageResource:
    """GET /: the live page (the token is typed in by its user, never embedded)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.text = (STATIC / "index.html").read_text()


_ERRORS: dict[type[ZaplineError], str] = {
    Unauthorized: falcon.HTTP_401,
    BadApiToken: falcon.HTTP_401,
    NotFound: falcon.HTTP_404,
    BadAdminToken: falcon.HTTP_401,
    UnknownProjection: falcon.HTTP_404,
    Conflict: falcon.HTTP_409,
    BrokerUnavailable: falcon.HTTP_503,
    UpgradeRequired: falcon.HTTP_426,
    BadQuery: falcon.HTTP_400,
    MediaNotStored: falcon.HTTP_409,
    MediaUnavailable: falcon.HTTP_503,
    BodyTooLarge: falcon.HTTP_413,
    BadWebhook: falcon.HTTP_400,
    StoreRejected: falcon.HTTP_400,
    StoreUnavailable: falcon.HTTP_503,
}


def _handler(status: str) -> Callable[..., None]:
    def handle(req: falcon.Request, resp: falcon.Response, error: Exception, params: dict) -> None:
        resp.status = status
        body: dict[str, object] = {"error": str(error)}
        if status == falcon.HTTP_503:
            resp.set_header("Retry-After", RETRY_AFTER_SECONDS)
            what = (
                "media store"
                if isinstance(error, MediaUnavailable)
                else "message broker"
                if isinstance(error, BrokerUnavailable)
                else "database"
            )
            body = {"error": f"{what} unavailable, retry later"}
            log.warning(f"{what} unavailable", extra={"fields": {"reason": str(error)[:300]}})
        if "quarantine_id" in req.context:
            body["quarantine_id"] = req.context.quarantine_id
        # A resource may have set its own type (a media's) before failing.
        resp.content_type = falcon.MEDIA_JSON
        resp.media = body

    return handle


def _unexpected(req: falcon.Request, resp: falcon.Response, error: Exception, params: dict) -> None:
    """Any other exception: a 500 in our error shape. Logged without the query string, which
    may hold a token (falcon's own handler logs the whole URL)."""
    log.error(
        "unexpected error",
        exc_info=error,
        extra={"fields": {"method": req.method, "path": req.path}},
    )
    resp.status = falcon.HTTP_500
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {"error": "internal error"}


def _migrations_at_head(pool: Pool) -> str:
    with pool.connection() as conn:
        applied = migrations.applied_version(conn)
        conn.rollback()
    if applied != migrations.head():
        raise probes.DependencyDown(f"at {applied}, head is {migrations.head()}")
    return f"at head ({applied})"


def _lag_seconds(pool: Pool) -> float:
    """How long the oldest event the projection has not applied yet has been waiting."""
    with pool.connection() as conn, conn, conn.cursor() as cur:
        cur.execute(
            "SELECT coalesce(extract(epoch FROM now() - min(e.received_at)), 0)"
            " FROM events e, checkpoints c WHERE c.projection = 'messages'"
            " AND (e.txid, e.position) > (c.txid::text::xid8, c.position)"
        )
        return round(float(cur.fetchone()[0]), 3)


def _workers_seen(redis: object) -> int:
    return heartbeat.count_workers(redis)
