"""MediaJobs.store(media_id): one attempt at taking a pending media to `stored`.

Safe to run twice, or concurrently for one media (Dramatiq delivers at least once): the bytes
go under their sha256, so a second upload rewrites the same object with the same bytes, and
only the first run that finds the row pending marks it stored and tells the feed.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from events.attachments import Attachment
from events.errors import MediaRejected, MediaUnavailable
from events.pool import Pool
from events.store import find_attachment, read_attachment
from pipeline.evolution import EvolutionMedia
from pipeline.media import MediaStorage, storage_key
from projections import media as rows
from projections.media import Media

log = logging.getLogger("zapline.media")

NO_SOURCE = (
    "waiting for a source: the webhook carried no usable inline base64 (none, or not valid"
    " base64) and EVOLUTION_API_URL is not set (turn on the instance webhook's base64, or"
    " configure Evolution)"
)


class MediaJobs:
    """Fetches a media's bytes (attachment or Evolution) and puts them in storage."""

    def __init__(
        self,
        pool: Pool,
        storage: MediaStorage,
        evolution: EvolutionMedia | None,
        *,
        max_attempts: int,
        publish: Callable[[list[Any]], object],
    ) -> None:
        self._pool = pool
        self._storage = storage
        self._evolution = evolution
        self._max_attempts = max_attempts
        self._publish = publish

    def store(self, media_id: int) -> str:
        """Make one attempt; return the media's state after it.

        Raises:
            MediaUnavailable: a transient failure with attempts left; retry later.
            StoreUnavailable: the database did not answer; retry later.
        """
        with self._pool.connection() as conn:
            media = rows.begin_attempt(conn, media_id)
        if media is None:  # stored, failed or unknown: a redelivery or a late retry
            return "skipped"
        try:
            return self._attempt(media)
        except MediaRejected as error:
            return self._fail(media, str(error))
        except MediaUnavailable as error:
            if media.attempts >= self._max_attempts:
                return self._fail(media, f"gave up after {media.attempts} attempts: {error}")
            with self._pool.connection() as conn:
                rows.record_reason(conn, media.id, f"attempt {media.attempts} failed: {error}")
            log.info(
                "media attempt failed",
                extra={
                    "fields": {"media": media.id, "attempt": media.attempts, "error": str(error)}
                },
            )
            raise

    def _attempt(self, media: Media) -> str:
        with self._bytes_of(media) as blob:
            if blob is None:
                with self._pool.connection() as conn:
                    rows.record_reason(conn, media.id, NO_SOURCE, tried=False)
                return "pending"
            assert blob.spool is not None
            key = storage_key(blob.sha256)
            mimetype = blob.mimetype or media.mimetype
            if not self._storage.exists(key):
                self._storage.put(key, blob.spool, mimetype)
        with self._pool.connection() as conn:
            changed = rows.record_stored(
                conn,
                media.id,
                sha256=blob.sha256,
                size=blob.size,
                mimetype=mimetype,
                storage_key=key,
            )
        self._push(changed)
        log.info("media stored", extra={"fields": {"media": media.id, "size": blob.size}})
        return "stored"

    def _fail(self, media: Media, reason: str) -> str:
        with self._pool.connection() as conn:
            changed = rows.record_failed(conn, media.id, reason)
        self._push(changed)
        log.warning("media failed", extra={"fields": {"media": media.id, "error": reason}})
        return "failed"

    def _push(self, changed: list[Any]) -> None:
        """Hand the message's new media state to live sockets now (they would otherwise find
        it in the feed table within a couple of seconds)."""
        try:
            self._publish(changed)
        except Exception as error:
            log.warning("fan-out failed", extra={"fields": {"error": type(error).__name__}})

    @contextmanager
    def _bytes_of(self, media: Media) -> Iterator[Attachment | None]:
        """The media's bytes in a temporary file: from its attachment, else from Evolution."""
        blob = self._from_attachment(media) if media.sha256 else None
        if blob is None and self._evolution is not None:
            blob = self._evolution.fetch(media.instance, media.key_id)
        try:
            yield blob
        finally:
            if blob is not None:
                blob.close()

    def _from_attachment(self, media: Media) -> Attachment | None:
        """Copy a stored attachment to a temporary file chunk by chunk, checking its sha256.

        Raises:
            MediaRejected: the stored bytes do not hash to their address.
        """
        assert media.sha256 is not None
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the Attachment, closed by caller
        digest = hashlib.sha256()
        size = 0
        with self._pool.connection() as conn, conn, conn.cursor() as cur:
            found = find_attachment(cur, media.sha256)
            if found is None:
                spool.close()
                return None
            for chunk in read_attachment(cur, found):
                digest.update(chunk)
                spool.write(chunk)
                size += len(chunk)
        if digest.hexdigest() != found.sha256 or size != found.size:
            spool.close()
            raise MediaRejected(f"attachment {found.sha256} does not hash to its address")
        spool.flush()
        return Attachment(found.sha256, size, found.mimetype, spool=spool)
