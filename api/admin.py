"""Admin routes behind ADMIN_TOKEN: projections and their rebuilds."""

from __future__ import annotations

import hmac
from collections.abc import Callable

import falcon

from api.auth import bearer, digest
from events.errors import ZaplineError
from events.pool import Pool
from pipeline import status
from projections import PROJECTION_NAMES, rebuild

# A request not picked up by a worker within this long may be asked for again.
REQUEST_STALE_SECONDS = 600


class BadAdminToken(ZaplineError):
    """An admin request without the admin token."""


class Conflict(ZaplineError):
    """The request clashes with what is already happening (a rebuild is running)."""


class AdminAuth:
    """Checks `Authorization: Bearer <ADMIN_TOKEN>` in constant time; no token, no admin."""

    def __init__(self, token: str | None) -> None:
        self._digest = digest(token) if token else None

    def require(self, req: falcon.Request) -> None:
        """Let the request through only with the admin token.

        Raises:
            BadAdminToken: no token, a wrong one, or ADMIN_TOKEN is not set.
        """
        offered = bearer(req)
        ok = hmac.compare_digest(digest(offered or ""), self._digest or b"")
        if offered is None or self._digest is None or not ok:
            raise BadAdminToken("missing or invalid admin token")


class ProjectionsResource:
    """GET /admin/projections: checkpoint, head, lag, parked count and rebuild per projection."""

    def __init__(self, auth: AdminAuth, pool: Pool) -> None:
        self._auth = auth
        self._pool = pool

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._auth.require(req)
        resp.cache_control = ["no-store"]
        resp.media = {"projections": status.projections(self._pool)}


class RebuildResource:
    """POST /admin/projections/{name}/rebuild: ask the worker for a zero-downtime rebuild."""

    def __init__(self, auth: AdminAuth, pool: Pool, send: Callable[[str], None]) -> None:
        self._auth = auth
        self._pool = pool
        self._send = send

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self._auth.require(req)
        if name not in PROJECTION_NAMES:
            raise UnknownProjection(f"no projection named {name!r}")
        name = PROJECTION_NAMES[name]
        with self._pool.connection() as conn, conn, conn.cursor() as cur:
            if rebuild.is_running(cur, name):
                raise Conflict(f"a rebuild of {name} is already running")
            # One pending request at a time; a stale one (no worker took it) may be renewed.
            cur.execute(
                "INSERT INTO rebuilds (projection, state, requested_at) VALUES (%s, 'requested',"
                " now()) ON CONFLICT (projection) DO UPDATE SET state = 'requested',"
                " requested_at = now(), error = NULL, updated_at = now()"
                " WHERE rebuilds.state <> 'requested'"
                " OR rebuilds.requested_at < now() - make_interval(secs => %s)"
                " RETURNING requested_at",
                (name, REQUEST_STALE_SECONDS),
            )
            found = cur.fetchone()
            if found is None:
                raise Conflict(f"a rebuild of {name} is already requested")
        try:
            self._send(name)
        except ZaplineError as error:
            # Nobody will run it: say so, and leave the door open for the retry a 503 asks for.
            with self._pool.connection() as conn, conn, conn.cursor() as cur:
                cur.execute(
                    "UPDATE rebuilds SET state = 'failed', error = %s, updated_at = now()"
                    " WHERE projection = %s AND state = 'requested' AND requested_at = %s",
                    (f"request not delivered to a worker: {error}", name, found[0]),
                )
            raise
        resp.status = falcon.HTTP_202
        resp.media = {
            "projection": name,
            "state": "requested",
            "status_url": "/admin/projections",
        }


class UnknownProjection(ZaplineError):
    """No projection has that name."""
