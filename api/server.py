"""The connection handler and gunicorn worker class of the web service."""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

import gevent
import gevent.event
import gevent.lock
from gevent.pywsgi import WSGIHandler
from geventwebsocket.exceptions import ProtocolError, WebSocketError
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import Header, WebSocket

from events.errors import ZaplineError

# gunicorn imports this module in its master process: it must import nothing of ours that
# pulls in drivers before the worker's gevent monkey-patching.
WS_PATH = "/ws"
# Set by the connection handler when it asks the app whether to upgrade a request.
PRECHECK = "zapline.websocket.precheck"
# From the moment a connection waits for a request (a new one, or idle between keep-alive
# requests) to the end of its headers; a client that has not sent them by then is dropped,
# or it would hold one of worker_connections for as long as it trickles bytes.
HEADERS_DEADLINE_SECONDS = 10.0


class MessageRefused(ZaplineError):
    """A client sent a message: the socket takes none.

    Not a socket error: gevent-websocket's receive() would swallow that and close without a
    code, where the client must see why.
    """


class OneWriterWebSocket(WebSocket):
    """A WebSocket that writes one frame at a time, and reads only control frames.

    The socket's writer, gevent-websocket's pongs (from the reading greenlet) and a
    shutdown's close frame each write from a greenlet of their own; while a frame waits on a
    slow client, another's bytes would land in its middle and break the stream.
    """

    __slots__ = ("writing",)

    def __init__(self, environ: Any, stream: Any, handler: Any) -> None:
        super().__init__(environ, stream, handler)
        self.writing = gevent.lock.Semaphore()

    def read_frame(self) -> tuple[Header, bytes]:
        """gevent-websocket's read_frame, refusing a message before reading its payload.

        The server takes nothing from clients but close, ping and pong (which
        gevent-websocket keeps to 125 bytes). It would buffer a message of any declared
        length and unmask it byte by byte in Python, holding the whole process.

        Raises:
            MessageRefused: a text, binary or continuation frame.
        """
        header = Header.decode_header(self.stream)
        if header.flags:
            raise ProtocolError
        if header.opcode in (self.OPCODE_TEXT, self.OPCODE_BINARY, self.OPCODE_CONTINUATION):
            raise MessageRefused("this socket takes no messages")
        payload = self.raw_read(header.length) if header.length else b""
        if len(payload) != header.length:
            raise WebSocketError("Unexpected EOF reading frame payload")
        gevent.sleep(0)  # frames sent back to back (a ping flood) must not hold the process
        return header, header.unmask_payload(payload) if header.mask else payload

    def send_frame(self, message: Any, opcode: int) -> None:
        with self.writing:
            super().send_frame(message, opcode)

    def send_close(self, code: int, reason: str, wait: float) -> bool:
        """Write a close frame with `code` (gevent-websocket's close() writes none); False
        when a frame still being written kept the socket for `wait` seconds."""
        if not self.writing.acquire(timeout=wait):
            return False
        try:
            frame = code.to_bytes(2, "big") + reason.encode()[:120]
            super().send_frame(frame, self.OPCODE_CLOSE)
        finally:
            self.writing.release()
        return True


class ZaplineHandler(WebSocketHandler):
    """Upgrades only `GET /ws`, and only after the app has authorised the request.

    gevent-websocket upgrades any path and answers 101 before the app runs; a bad token must
    get its 401 as a plain HTTP answer instead (contract "Live push"). While draining, it
    closes keep-alive connections: an idle one would otherwise hold the worker until
    gunicorn's graceful timeout. A request line and headers not in within
    HEADERS_DEADLINE_SECONDS close the connection (pywsgi has no timeout of its own, and
    gunicorn's keepalive does not reach this handler).
    """

    idle = False
    headers_due = 0.0  # time.monotonic() by which this request's headers must be in

    def handle(self) -> None:
        _OPEN.add(self)
        try:
            super().handle()
        finally:
            _OPEN.discard(self)

    def read_requestline(self) -> str:
        if _DRAINING.is_set():
            return ""  # no further request on this connection
        self.idle = True
        self.headers_due = time.monotonic() + HEADERS_DEADLINE_SECONDS
        try:
            with gevent.Timeout(HEADERS_DEADLINE_SECONDS, False):
                line: str = super().read_requestline()
                return line
            return ""  # no request line in time: close the connection
        finally:
            self.idle = False

    def read_request(self, raw_requestline: str) -> bool:
        with gevent.Timeout(max(self.headers_due - time.monotonic(), 0.0), False):
            done: bool = super().read_request(raw_requestline)
            return done
        return False  # headers not in time: pywsgi answers 400 and closes the connection

    def upgrade_connection(self) -> Any:
        answer = super().upgrade_connection()
        plain = getattr(self, "websocket", None)
        if plain is not None and not isinstance(plain, OneWriterWebSocket):
            plain.closed = True  # so that its __del__ writes no close frame
            self.websocket = OneWriterWebSocket(self.environ, plain.stream, self)
            self.environ["wsgi.websocket"] = self.websocket
        return answer

    def log_request(self) -> None:
        """Nothing: api/requestlog.py logs each request (without its query string)."""

    def finalize_headers(self) -> None:
        super().finalize_headers()
        if _DRAINING.is_set() and not self.connection_upgraded:
            self.response_headers.append((b"Connection", b"close"))
            self.close_connection = True

    def run_application(self) -> Any:
        if self.environ.get("PATH_INFO") != WS_PATH or not _asks_upgrade(self.environ):
            result = WSGIHandler.run_application(self)
            self._leave_unread_body()
            return result
        answer: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer.update(status=status, headers=headers)
            return lambda data: None

        body = b"".join(self.application({**self.environ, PRECHECK: True}, capture))
        if answer["status"].startswith("204"):
            return super().run_application()
        self.start_response(answer["status"], answer["headers"])
        self.write(body)
        return None

    def _leave_unread_body(self) -> None:
        """Close the connection after the answer rather than read a body the application left
        unread (a refused webhook's): pywsgi would read it to the end first, for as long as a
        client cares to trickle it."""
        body = self.wsgi_input
        if body is not None and (body.chunked_input or body.position < (body.content_length or 0)):
            self.close_connection = True
            body.content_length, body.chunked_input = body.position, False  # nothing to read


class ZaplineWorker(GeventWebSocketWorker):
    """The gevent-websocket worker, told about SIGTERM as soon as it arrives.

    gunicorn has no hook at the start of a graceful shutdown and keeps WebSockets open until
    graceful_timeout, then drops them without a close frame. Here readiness turns 503 and
    every socket gets close code 1012 the moment SIGTERM lands (design.md invariant 10).
    """

    wsgi_handler = ZaplineHandler

    def handle_exit(self, sig: int, frame: Any) -> None:
        gevent.spawn(_drain)
        super().handle_exit(sig, frame)


IDLE_GRACE_SECONDS = 1.0
# The connections of this worker process, and whether it is draining.
_OPEN: set[ZaplineHandler] = set()
_DRAINING = gevent.event.Event()


def _drain() -> None:
    from api.app import LIFECYCLE  # imported in the worker, after fork

    _DRAINING.set()
    LIFECYCLE.start_draining()
    # A moment for clients already on a keep-alive connection to see readiness say 503
    # (every answer now says Connection: close), then drop the idle ones.
    gevent.sleep(IDLE_GRACE_SECONDS)
    for handler in list(_OPEN):
        if handler.idle and handler.socket is not None:
            with contextlib.suppress(OSError):
                handler.socket.shutdown(socket.SHUT_RD)


def _asks_upgrade(environ: dict[str, Any]) -> bool:
    return environ.get("HTTP_UPGRADE", "").lower() == "websocket"
