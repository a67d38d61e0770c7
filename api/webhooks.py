"""WebhookResource: POST /webhooks/evolution[/{suffix}] — 200 only after the event is committed."""

from __future__ import annotations

from typing import Any

import falcon

from api.auth import WebhookAuth
from api.ingest import GroupCommitter
from events.attachments import LARGE_BODY_BYTES
from events.errors import BadWebhook, StoreRejected, ZaplineError
from events.store import EventStore
from events.webhook import parse_webhook


class BodyTooLarge(ZaplineError):
    """The body is over MAX_BODY_BYTES."""


class WebhookResource:
    """Authenticates, bounds, parses and durably appends one Evolution webhook."""

    # A NUL in the URL does not stop an authenticated webhook (RejectNul passes it over):
    # no URL value is stored but the quarantined path, which is cleaned first.
    nul_safe = True

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
            self._quarantine(req, body, error)
            raise
        try:
            appended = self._committer.append(webhook)
        except StoreRejected as error:  # JSON that jsonb cannot hold (NaN, 1e999999, ...)
            self._quarantine(req, body, error)
            raise
        finally:
            if webhook.attachment is not None:
                webhook.attachment.close()
        req.context.position = appended.position
        resp.media = {"position": appended.position, "duplicate": appended.duplicate}

    def _quarantine(self, req: falcon.Request, body: bytes | bytearray, error: Exception) -> None:
        """Keep a body we answer 400 for: nothing authenticated is thrown away (invariant 3)."""
        req.context.quarantine_id = self._store.quarantine(
            path=req.path.replace("\x00", "\ufffd"),
            content_type=req.content_type,
            reason=str(error),
            body=body,
        )

    def _read_body(self, req: falcon.Request) -> bytes | bytearray:
        limit = self._max_body_bytes
        length = req.content_length
        if length is not None and length > limit:
            raise BodyTooLarge(f"body over {limit} bytes")
        if length is not None and length > LARGE_BODY_BYTES:
            return _read_into(req.bounded_stream, length)
        stream = req.bounded_stream if length is not None else req.stream
        body: bytes = stream.read(limit + 1)
        if len(body) > limit:
            raise BodyTooLarge(f"body over {limit} bytes")
        return body


def _read_into(stream: Any, length: int) -> bytearray:
    """Read a large body into one buffer, piece by piece.

    One `read(length)` makes gunicorn gather the pieces and join them, holding the body two
    or three times over at the peak.
    """
    body = bytearray(length)
    view = memoryview(body)
    filled = 0
    while filled < length:
        piece = stream.read(min(_READ_PIECE, length - filled))
        if not piece:
            break
        view[filled : filled + len(piece)] = piece
        filled += len(piece)
    view.release()
    del body[filled:]  # the sender closed early: what arrived is judged as the body
    return body


_READ_PIECE = 256 * 1024
