"""Live push: GET /ws streams an instance's change feed — backlog after a cursor, then live.

Each web process holds one Redis pattern subscription; frames published by the projector
after commit reach every socket of that instance. Redis is only a fast path: a socket that
sees a cursor jump, overflows, or stays behind the feed head fills the gap from the feed
table, so a lost pub/sub message, a Redis restart or an outage loses nothing (design.md
invariant 9).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from typing import Any

import falcon
import gevent
from gevent.lock import BoundedSemaphore
from gevent.queue import Empty, Full, Queue
from geventwebsocket.exceptions import WebSocketError

from api.health import Lifecycle
from api.metrics import WEBSOCKET_CLIENTS
from api.reads import BadQuery, read_feed, whole_or_none
from api.server import PRECHECK, MessageRefused
from api.tokens import ApiAuth
from events.errors import StoreUnavailable, ZaplineError
from events.pool import Pool
from pipeline import fanout
from pipeline.fanout import frames

log = logging.getLogger("zapline.live")

POLICY_VIOLATION = 1008
SERVICE_RESTART = 1012
TRY_AGAIN_LATER = 1013  # the database cannot be read now: reconnect with backoff
PING_SECONDS = 20.0
# A client that vanished without closing (power loss, dead network) is dropped by the kernel
# within about this long, whether the socket is idle (keepalive) or has unacked frames.
DEAD_AFTER_SECONDS = 60
CHECK_SECONDS = 2.0
QUEUE_LIMIT = 1000
PAGE = 1000
DB_READERS = 3  # sockets of one web process reading the feed table at once
# How long a close waits for a frame being written to a slow client before dropping it.
CLOSE_WAIT_SECONDS = 1.0
_FILL = (-1, "")  # queue marker: catch up from the feed table


class UpgradeRequired(ZaplineError):
    """GET /ws without a WebSocket upgrade."""


class Subscriber:
    """One socket following one instance; `last` is the cursor it has been sent."""

    def __init__(self, ws: Any, instance: str) -> None:
        self.ws = ws
        self.instance = instance
        self.queue: Queue[tuple[int, str]] = Queue(QUEUE_LIMIT)
        self.last = 0
        self.checked = -1
        self.closed = False
        _reap_when_dead(ws.handler.socket)

    def offer(self, item: tuple[int, str]) -> None:
        """Queue a frame; a slow socket that overflows catches up from the feed instead."""
        try:
            self.queue.put_nowait(item)
        except Full:
            self.wake_to_fill()

    def wake_to_fill(self) -> None:
        # A full queue keeps the writer busy; it notices the gap by the cursor jump.
        with contextlib.suppress(Full):
            self.queue.put_nowait(_FILL)

    def send(self, text: str) -> None:
        self.ws.send(text)

    def send_json(self, **fields: Any) -> None:
        self.ws.send(json.dumps(fields, separators=(",", ":")))

    def ping(self) -> None:
        self.ws.send_frame(b"", self.ws.OPCODE_PING)
        self.send_json(type="ping", cursor=self.last)

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame with `code` and let go of the socket; a socket stuck mid-frame
        on a client that does not read is dropped instead, rather than break that frame or
        hold up the shutdown (api/server.py's OneWriterWebSocket)."""
        if self.closed:
            return
        self.closed = True
        ws = self.ws
        try:
            if not ws.closed and not ws.send_close(code, reason, CLOSE_WAIT_SECONDS):
                ws.handler.socket.shutdown(socket.SHUT_RDWR)
        except (WebSocketError, OSError):
            pass
        finally:
            ws.closed = True
        self.wake_to_fill()

    def read_forever(self) -> None:
        """Consume what the client sends (pongs, close) until the socket ends."""
        try:
            while not self.closed:
                if self.ws.receive() is None:
                    break
        except MessageRefused as refused:
            self.close(POLICY_VIOLATION, str(refused))
        except (WebSocketError, OSError):
            pass
        self.closed = True
        self.wake_to_fill()


class Hub:
    """The sockets of one web process, fed from Redis and checked against the feed head."""

    def __init__(self, redis: Any, pool: Pool) -> None:
        self._redis = redis
        self._pool = pool
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._heads: dict[str, int] = {}  # the newest cursor seen per followed instance
        self._greenlets: list[gevent.Greenlet] = []
        self._prefix = ""  # this database's channels (fanout.prefix), set by _listen

    def add(self, sub: Subscriber) -> None:
        if not self._greenlets:
            self._greenlets = [gevent.spawn(self._listen), gevent.spawn(self._check)]
        self._subscribers.setdefault(sub.instance, set()).add(sub)
        WEBSOCKET_CLIENTS.set(self.count())

    def remove(self, sub: Subscriber) -> None:
        subs = self._subscribers.get(sub.instance)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.instance]
                self._heads.pop(sub.instance, None)
        WEBSOCKET_CLIENTS.set(self.count())

    def head(self, instance: str) -> int | None:
        """The feed head of an instance this process follows, if it has seen it lately."""
        return self._heads.get(instance)

    def count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    def close_all(self, code: int = SERVICE_RESTART) -> None:
        """Close every socket with `code` (1012 on shutdown: clients reconnect at once)."""
        closing = [
            gevent.spawn(sub.close, code, "service restart")
            for subs in list(self._subscribers.values())
            for sub in list(subs)
        ]
        gevent.joinall(closing, timeout=CLOSE_WAIT_SECONDS + 1)  # together: one slow is 1 s

    def _listen(self) -> None:
        pause = 0.5
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                # Read each time: before migrations the first tries fail and are retried.
                with self._pool.connection() as conn, conn, conn.cursor() as cur:
                    self._prefix = fanout.prefix(fanout.scope(cur))
                pubsub.psubscribe(self._prefix + "*")
                self._wake_all()  # anything published while we were not listening
                pause = 0.5
                pinged = time.monotonic()
                while True:
                    message = pubsub.get_message(timeout=5.0)
                    if message is not None and message["type"] == "pmessage":
                        self._deliver(message)
                    if time.monotonic() - pinged > 10:  # a silent dead server shows up
                        pubsub.ping()
                        pinged = time.monotonic()
            except Exception as error:  # Redis down or restarted: retry, fill from the feed
                log.warning(
                    "live fan-out lost Redis; retrying",
                    extra={"fields": {"error": type(error).__name__}},
                )
            finally:
                pubsub.close()
            gevent.sleep(pause)
            pause = min(pause * 2, 5.0)

    def _deliver(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        instance = channel[len(self._prefix) :]
        subs = self._subscribers.get(instance)
        if not subs:
            return
        items = frames(message["data"])
        self._heads[instance] = max(items[-1][0], self._heads.get(instance, 0))
        for sub in list(subs):
            for item in items:
                sub.offer(item)

    def _wake_all(self) -> None:
        for subs in list(self._subscribers.values()):
            for sub in list(subs):
                sub.wake_to_fill()

    def _check(self) -> None:
        """Every few seconds: wake any socket that stays behind the feed head."""
        while True:
            gevent.sleep(CHECK_SECONDS)
            try:
                self._check_once()
            except Exception:
                log.exception("live check failed")

    def _check_once(self) -> None:
        instances = list(self._subscribers)
        if not instances:
            return
        with self._pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                "SELECT instance, cursor FROM feed_heads WHERE instance = ANY(%s)", (instances,)
            )
            heads = dict(cur.fetchall())
        for instance, head in heads.items():
            self._heads[instance] = max(head, self._heads.get(instance, 0))
            for sub in list(self._subscribers.get(instance, ())):
                # Behind for two checks in a row with nothing queued: a frame was lost,
                # not merely in flight or waiting behind a slow socket.
                if sub.last < head and sub.last == sub.checked and sub.queue.empty():
                    sub.wake_to_fill()
                sub.checked = sub.last


class LiveResource:
    """GET /ws?instance=&after=&token=: the instance's feed over a WebSocket."""

    def __init__(self, auth: ApiAuth, hub: Hub, pool: Pool, lifecycle: Lifecycle) -> None:
        self._auth = auth
        self._hub = hub
        self._pool = pool
        self._lifecycle = lifecycle
        # Thousands of sockets reconnecting after a deploy queue here instead of exhausting
        # the pool (and timing out) all at once.
        self._readers = BoundedSemaphore(DB_READERS)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        instance = req.get_param("instance") or ""
        if not instance:
            raise BadQuery("instance is required")
        self._auth.require(req, instance)
        after = whole_or_none(req, "after", low=0)
        if req.env.get(PRECHECK):
            resp.status = falcon.HTTP_204
            return
        ws = req.env.get("wsgi.websocket")
        if ws is None:
            raise UpgradeRequired("GET /ws needs a WebSocket upgrade")
        sub = Subscriber(ws, instance)
        if self._lifecycle.draining:
            sub.close(SERVICE_RESTART, "service restart")
            return
        self._stream(sub, after)

    def _stream(self, sub: Subscriber, after: int | None) -> None:
        self._hub.add(sub)  # subscribe before reading the backlog: nothing slips between
        reader = gevent.spawn(sub.read_forever)
        try:
            if after is None:
                sub.last = self._head(sub.instance)
            else:
                sub.last = after
                self._fill(sub)
            sub.send_json(type="live", cursor=sub.last)
            self._follow(sub)
        except (WebSocketError, OSError):
            pass  # the client went away
        except StoreUnavailable:
            # Down, or not migrated yet (the pool says which): a close code, not a dropped
            # connection (1006), so the client knows to come back.
            sub.close(TRY_AGAIN_LATER, "database unavailable")
        finally:
            self._hub.remove(sub)
            sub.closed = True
            reader.kill(block=False)

    def _follow(self, sub: Subscriber) -> None:
        while not sub.closed:
            try:
                cursor, text = sub.queue.get(timeout=PING_SECONDS)
            except Empty:
                sub.ping()
                continue
            if sub.closed:
                return
            if (cursor, text) == _FILL or cursor > sub.last + 1:
                self._fill(sub)  # a gap: Redis lost a frame, or this socket overflowed
            if cursor > sub.last:
                sub.send(text)
                sub.last = cursor

    def _fill(self, sub: Subscriber) -> None:
        """Send everything in the feed after `sub.last`; reset when it was pruned past."""
        while not sub.closed:
            with self._readers, self._pool.connection() as conn, conn, conn.cursor() as cur:
                rows, reset_to = read_feed(cur, sub.instance, sub.last, PAGE)
            if reset_to is not None:
                sub.send_json(type="reset")
                sub.last = reset_to
                return
            for cursor, text in rows:
                sub.send(text)
                sub.last = cursor
            if len(rows) < PAGE:
                return

    def _head(self, instance: str) -> int:
        known = self._hub.head(instance)
        if known is not None:
            return known
        with self._readers, self._pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute("SELECT cursor FROM feed_heads WHERE instance = %s", (instance,))
            row = cur.fetchone()
        return int(row[0]) if row else 0


def _reap_when_dead(sock: Any) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, DEAD_AFTER_SECONDS * 1000)
