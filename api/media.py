"""MediaResource: GET /api/media/{media_id} — a short-lived link to the bytes, or the bytes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

import falcon

from api.tokens import ApiAuth, NotFound, may_see
from events.errors import ZaplineError
from events.pool import Pool
from pipeline.media import MediaStorage, served_type, shown_inline

_MEDIA = "SELECT instance, status, mimetype, size, storage_key FROM media WHERE id = %s"
_BIGINT_MAX = 2**63 - 1
# How much of a local file one write hands the server at a time.
_BLOCK_BYTES = 256 * 1024


class MediaNotStored(ZaplineError):
    """The media exists but its bytes are not stored (yet, or ever: see its status)."""


class MediaResource:
    """302 to a presigned URL (S3), or the file streamed with its type and length (local)."""

    def __init__(self, auth: ApiAuth, pool: Pool, storage: MediaStorage) -> None:
        self._auth = auth
        self._pool = pool
        self._storage = storage

    def on_get(self, req: falcon.Request, resp: falcon.Response, media_id: str) -> None:
        instances = self._auth.instances_for(req)
        found = None
        # isascii: str.isdigit also accepts "³" and other digits int() refuses.
        if media_id.isascii() and media_id.isdigit() and int(media_id) <= _BIGINT_MAX:
            with self._pool.connection() as conn, conn.cursor() as cur:
                cur.execute(_MEDIA, (int(media_id),))
                found = cur.fetchone()
                conn.rollback()
        # Unknown and another tenant's media look the same (no existence leak).
        if found is None or not may_see(instances, found[0]):
            raise NotFound("not found")
        _, status, mimetype, size, key = found
        if status != "stored" or key is None:
            raise MediaNotStored(f"media is {status}")
        content_type = served_type(mimetype)
        resp.cache_control = ["private", "no-store"]
        url = self._storage.url(key, content_type)
        if url is not None:
            raise falcon.HTTPFound(url, headers={"Cache-Control": "private, no-store"})
        wanted = _byte_range(req, size)
        stream = self._storage.open(key)
        resp.content_type = content_type
        resp.set_header("X-Content-Type-Options", "nosniff")
        # Nothing a sender stores may run as a page of our origin, where a reader's ?token=
        # sits in the address.
        resp.set_header("Content-Security-Policy", "sandbox")
        if not shown_inline(content_type):
            resp.set_header("Content-Disposition", "attachment")
        resp.accept_ranges = "bytes"
        if wanted is None:
            resp.set_stream(stream, size)
            return
        # A part, as browsers ask to seek in (and Safari to play) audio and video.
        first, last = wanted
        resp.status = falcon.HTTP_206
        resp.content_range = (first, last, size)
        resp.content_length = last - first + 1
        resp.stream = _part(stream, first, last - first + 1)


def _byte_range(req: falcon.Request, size: int | None) -> tuple[int, int] | None:
    """The first and last byte a Range header asks for, or None to send the whole file.

    A header we cannot read is ignored, as RFC 9110 allows.

    Raises:
        falcon.HTTPRangeNotSatisfiable: the range starts past the end.
    """
    try:
        asked = req.range
    except falcon.HTTPBadRequest:
        # Falcon rejects a zero-length suffix, which RFC 9110 calls valid but unsatisfiable.
        if size and (req.get_header("Range") or "").replace(" ", "") == "bytes=-0":
            raise falcon.HTTPRangeNotSatisfiable(size) from None
        return None
    if asked is None or size is None or req.range_unit != "bytes":
        return None
    first, last = asked
    if first < 0:  # the last -first bytes
        first, last = max(size + first, 0), size - 1
    if first >= size:
        raise falcon.HTTPRangeNotSatisfiable(size)
    return first, size - 1 if last < 0 else min(last, size - 1)


def _part(stream: IO[bytes], first: int, length: int) -> Iterator[bytes]:
    """`length` bytes of a file from `first`, in blocks; the file is closed when done or
    abandoned (the server closes the iterable when a client goes away)."""
    try:
        stream.seek(first)
        while length > 0:
            block = stream.read(min(_BLOCK_BYTES, length))
            if not block:
                return
            length -= len(block)
            yield block
    finally:
        stream.close()
