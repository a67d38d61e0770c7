"""WakeUps: after commits, ring the projector's doorbell from one greenlet per web process.

Dramatiq keeps its AMQP connection in a thread-local, which gevent makes greenlet-local:
sending from request greenlets would open (and leak) one connection per request
(docs/research/deploy-semantics.md D2). One publishing greenlet also coalesces: however many
commits happen while a send is in flight, one more send follows it. A broker that is down or
hangs never slows a webhook; the workers catch up on their own (design.md invariant 6).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import gevent
from gevent.event import Event

log = logging.getLogger("zapline.wakeup")


class WakeUps:
    """Coalesced, best-effort wake-up messages."""

    def __init__(
        self,
        send: Callable[[], object],
        reset: Callable[[], None] = lambda: None,
        *,
        timeout: float = 5.0,
        pause_after_failure: float = 1.0,
    ) -> None:
        self._send = send
        self._reset = reset
        self._timeout = timeout
        self._pause = pause_after_failure
        self._pending = Event()
        self._greenlet: gevent.Greenlet | None = None
        self._last_warning = 0.0
        self.sent = 0
        self.failed = 0

    def notify(self) -> None:
        """Ask for one wake-up soon; never blocks."""
        self._pending.set()
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._publish_forever)

    def _publish_forever(self) -> None:
        while True:
            self._pending.wait()
            self._pending.clear()
            try:
                with gevent.Timeout(self._timeout):
                    self._send()
                self.sent += 1
            except BaseException as error:  # gevent.Timeout is a BaseException
                if isinstance(error, gevent.GreenletExit):
                    raise
                self.failed += 1
                self._warn(error)
                self._safely_reset()
                gevent.sleep(self._pause)

    def _safely_reset(self) -> None:
        # The connection is already broken; dropping it is all we want.
        with contextlib.suppress(Exception):
            self._reset()

    def _warn(self, error: BaseException) -> None:
        if time.monotonic() - self._last_warning > 30:
            self._last_warning = time.monotonic()
            log.warning(
                "wake-up not sent; workers will catch up on their own",
                extra={"fields": {"error": type(error).__name__}},
            )
