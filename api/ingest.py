"""GroupCommitter: concurrent webhook requests share commits, each answered after its own.

One commit per request caps a web process at its commit rate (about 1,000/s here). Requests
instead queue their webhook; a few writer greenlets each take everything queued, append it
in one transaction and then wake every waiting request. No request is answered before the
transaction holding its event has committed (design.md invariant 1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import gevent
from gevent.event import AsyncResult
from gevent.queue import Empty, Queue

from events.errors import StoreRejected, StoreUnavailable
from events.store import Appended
from events.webhook import Webhook

log = logging.getLogger("zapline.ingest")

AppendBatch = Callable[[Sequence[Webhook]], list[Appended]]


class GroupCommitter:
    """Appends webhooks through a few writer greenlets, batching whatever is waiting."""

    def __init__(
        self,
        append: AppendBatch,
        *,
        writers: int = 2,
        max_batch: int = 256,
        max_batch_bytes: int = 8 * 1024 * 1024,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._append = append
        self._writers = writers
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._on_commit = on_commit
        self._queue: Queue[tuple[Webhook, AsyncResult]] = Queue()
        self._greenlets: list[gevent.Greenlet] = []

    def append(self, webhook: Webhook, timeout: float = 20.0) -> Appended:
        """Store one webhook; return only once it is committed.

        Raises:
            StoreUnavailable: the database did not take it within `timeout` seconds.
            StoreRejected: the database refused this webhook's data.
        """
        if not self._greenlets:
            self._greenlets = [gevent.spawn(self._write_forever) for _ in range(self._writers)]
        result: AsyncResult = AsyncResult()
        self._queue.put((webhook, result))
        try:
            appended: Appended = result.get(timeout=timeout)
        except gevent.Timeout:
            raise StoreUnavailable(f"not committed within {timeout:g} s") from None
        return appended

    def _write_forever(self) -> None:
        while True:
            batch = self._next_batch()
            try:
                self._write(batch)
            except Exception as error:  # keep the writer alive whatever happens
                log.exception("append failed")
                for _, result in batch:
                    if not result.ready():
                        result.set_exception(StoreUnavailable(str(error)))

    def _next_batch(self) -> list[tuple[Webhook, AsyncResult]]:
        batch = [self._queue.get()]
        size = _size(batch[0][0])
        while len(batch) < self._max_batch and size < self._max_batch_bytes:
            try:
                item = self._queue.get_nowait()
            except Empty:
                break
            batch.append(item)
            size += _size(item[0])
        return batch

    def _write(self, batch: list[tuple[Webhook, AsyncResult]]) -> None:
        try:
            answers = self._append([webhook for webhook, _ in batch])
        except StoreRejected as error:
            if len(batch) == 1:
                batch[0][1].set_exception(error)
                return
            for item in batch:  # find the webhook the database refuses; the others go in
                self._write([item])
            return
        except StoreUnavailable as error:
            for _, result in batch:
                result.set_exception(error)
            return
        for (_, result), answer in zip(batch, answers, strict=True):
            result.set(answer)
        if self._on_commit is not None:
            self._on_commit()


def _size(webhook: Webhook) -> int:
    blob = webhook.attachment
    return len(webhook.payload_json) + (blob.size if blob else 0)
