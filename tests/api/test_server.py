"""The connection handler: a client gets a bounded time to send its request's headers."""

from __future__ import annotations

import http.client
import select
import socket
import time

import pytest

from api.server import HEADERS_DEADLINE_SECONDS
from tests.conftest import WebServer

pytestmark = pytest.mark.services

MARGIN_SECONDS = 3.0
TRICKLE_SECONDS = 2.0


def test_a_connection_that_has_not_sent_its_headers_in_time_is_closed(web: WebServer) -> None:
    """A silent connection, and one trickling a header byte every 2 s (slowloris), are both
    dropped within the deadline, while a normal request on the same process is answered."""
    # given: one connection that sends nothing, one that sends half a request and trickles
    silent = socket.create_connection(("127.0.0.1", web.port), timeout=5)
    trickling = socket.create_connection(("127.0.0.1", web.port), timeout=5)
    trickling.sendall(b"POST /webhooks/evolution HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed_after: dict[socket.socket, float] = {}
    trickled = started
    try:
        # when: time passes, up to the deadline and a margin
        while len(closed_after) < 2 and time.monotonic() - started < (
            HEADERS_DEADLINE_SECONDS + MARGIN_SECONDS
        ):
            still_open = [s for s in (silent, trickling) if s not in closed_after]
            readable, _, _ = select.select(still_open, [], [], 0.2)
            for sock in readable:
                try:
                    if not sock.recv(4096):
                        closed_after[sock] = time.monotonic() - started
                except OSError:
                    closed_after[sock] = time.monotonic() - started
            if trickling not in closed_after and time.monotonic() - trickled >= TRICKLE_SECONDS:
                trickled = time.monotonic()
                try:
                    trickling.sendall(b"X")
                except OSError:
                    closed_after[trickling] = trickled - started
        answer = web.request("GET", "/health", timeout=5)
    finally:
        silent.close()
        trickling.close()
    # then: both were closed by the server, and a normal request still works
    assert set(closed_after) == {silent, trickling}, closed_after
    assert answer.status == 200


def test_a_kept_alive_connection_serves_a_second_request_sent_within_the_deadline(
    web: WebServer,
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    try:
        statuses, sockets = [], []
        for pause in (0.0, 1.0):
            time.sleep(pause)
            conn.request("GET", "/health")
            answer = conn.getresponse()
            answer.read()
            statuses.append(answer.status)
            sockets.append(conn.sock)
    finally:
        conn.close()
    assert statuses == [200, 200] and sockets[0] is sockets[1] is not None


def test_a_body_the_app_did_not_read_is_not_waited_for_after_the_answer(web: WebServer) -> None:
    """A refused webhook's body is left unread: the connection closes after the 401 instead
    of waiting, for as long as the client trickles it, to read the rest."""
    client = socket.create_connection(("127.0.0.1", web.port), timeout=5)
    try:
        client.sendall(
            b"POST /webhooks/evolution HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{"
        )
        received, closed = b"", False
        deadline = time.monotonic() + HEADERS_DEADLINE_SECONDS / 2
        while not closed and time.monotonic() < deadline:
            readable, _, _ = select.select([client], [], [], 0.5)
            if readable:
                chunk = client.recv(4096)
                received += chunk
                closed = not chunk
            elif b"\r\n\r\n" in received:
                client.sendall(b" ")  # the body, trickled
    finally:
        client.close()
    assert received.startswith(b"HTTP/1.1 401") and closed
