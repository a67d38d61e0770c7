"""WebhookResource: POST /webhooks/evolution[/{suffix}] — 200 only after the event is committed."""

from __future__ import annotations

import falcon

from api.auth import WebhookAuth
from api.ingest import GroupCommitter
from events.errors import BadWebhook, ZaplineError
from events.store import EventStore
from events.webhook import parse_webhook


class BodyTooLarge(ZaplineError):
    """The body is over MAX_BODY_BYTES."""


class WebhookResource:
    """Authenticates, bounds, parses and durably appends one Evolution webhook."""

    def __init__(
        self, auth: WebhookAuth, committer: GroupCommitter, store: EventStore, max_body_bytes: int
    ) -> None:
        self._auth = auth
        self._committer = committer
        self._store = store
        self._max_body_bytes = max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response, suffix: str = "") -> None:
        self._auth.verify(req)
        body = self._read_body(req)
        try:
            webhook = parse_webhook(body)
        except BadWebhook as error:
            # Nothing authenticated is thrown away (design.md invariant 3).
            req.context.quarantine_id = self._store.quarantine(
                path=req.path, content_type=req.content_type, reason=str(error), body=body
            )
            raise
        appended = self._committer.append(webhook)
        req.context.position = appended.position
        resp.media = {"position": appended.position, "duplicate": appended.duplicate}

    def _read_body(self, req: falcon.Request) -> bytes:
        limit = self._max_body_bytes
        if req.content_length is not None and req.content_length > limit:
            raise BodyTooLarge(f"body over {limit} bytes")
        stream = req.bounded_stream if req.content_length is not None else req.stream
        body: bytes = stream.read(limit + 1)
        if len(body) > limit:
            raise BodyTooLarge(f"body over {limit} bytes")
        return body
