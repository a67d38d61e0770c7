"""GET /ws through real gunicorn, worker, Redis and PostgreSQL: no gap, no duplicate, ever."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
import websocket

from events.pool import Pool
from events.store import EventStore
from events.webhook import parse_webhook
from pipeline import fanout
from projections.feed import FeedItem
from tests.conftest import (
    WEBHOOK_TOKEN,
    WebServer,
    drop_database,
    new_database,
    projected_up_to_head,
    sql,
    start_web,
    start_worker,
    wait_for,
)
from tests.netutil import TcpProxy, free_port

pytestmark = pytest.mark.services

TOKENS = "tok-a:alpha,tok-b:beta,tok-all:*"


def _upsert(instance: str, key_id: str, ts: int = 1764460800) -> bytes:
    return json.dumps(
        {
            "event": "messages.upsert",
            "instance": instance,
            "data": {
                "key": {"id": key_id, "remoteJid": "551199990000@s.whatsapp.net", "fromMe": False},
                "message": {"conversation": key_id},
                "messageTimestamp": ts,
            },
        }
    ).encode()


def _connect(
    web: WebServer, instance: str, token: str, after: int | None = None
) -> websocket.WebSocket:
    query = f"instance={instance}&token={token}" + ("" if after is None else f"&after={after}")
    return websocket.create_connection(f"ws://127.0.0.1:{web.port}/ws?{query}", timeout=15)


def _frames_until(ws: websocket.WebSocket, done, limit: int = 5000) -> list[dict]:
    """Read JSON frames (skipping pings) until `done(frames)` holds."""
    frames: list[dict] = []
    for _ in range(limit):
        frame = json.loads(ws.recv())
        if frame["type"] != "ping":
            frames.append(frame)
        if done(frames):
            return frames
    raise AssertionError(f"gave up after {limit} frames")


def _created_keys(frames: list[dict]) -> list[str]:
    return [f["data"]["key_id"] for f in frames if f["type"] == "message.created"]


def _assert_strictly_increasing(frames: list[dict]) -> None:
    cursors = [f["cursor"] for f in frames if "cursor" in f and f["type"] not in ("live",)]
    assert cursors == sorted(set(cursors)), "cursors must strictly increase"


@pytest.fixture
def stack(fresh_database_url: str) -> Iterator[tuple[str, WebServer]]:
    worker = start_worker(fresh_database_url)
    web = start_web(fresh_database_url, API_TOKENS=TOKENS)
    yield fresh_database_url, web
    web.stop()
    worker.stop()


@pytest.fixture
def web_only(fresh_database_url: str) -> Iterator[tuple[str, WebServer]]:
    """The stack without a worker, for tests that project nothing (a worker's graceful stop
    takes seconds)."""
    web = start_web(fresh_database_url, API_TOKENS=TOKENS)
    yield fresh_database_url, web
    web.stop()


def test_backlog_then_live_then_live_changes_without_gap_or_duplicate(stack) -> None:
    url, web = stack
    for i in range(5):
        assert web.post_webhook(_upsert("alpha", f"OLD{i}")).status == 200
    wait_for(lambda: projected_up_to_head(url))
    ws = _connect(web, "alpha", "tok-a", after=0)
    backlog = _frames_until(ws, lambda fs: fs[-1]["type"] == "live")
    for i in range(5):
        web.post_webhook(_upsert("alpha", f"NEW{i}"))
    live = _frames_until(ws, lambda fs: len(_created_keys(fs)) == 5)
    ws.close()
    assert _created_keys(backlog) == [f"OLD{i}" for i in range(5)]
    assert _created_keys(live) == [f"NEW{i}" for i in range(5)]
    assert backlog[-1]["cursor"] == backlog[-2]["cursor"]  # live names the last cursor sent
    _assert_strictly_increasing(backlog[:-1] + live)
    assert live[0]["cursor"] == backlog[-1]["cursor"] + 1


def test_changes_racing_the_switch_to_live_arrive_exactly_once(stack) -> None:
    url, web = stack
    # given: webhooks keep arriving while clients connect and read their backlog
    import threading

    stop = threading.Event()

    def post_forever() -> None:
        for i in range(300):
            if stop.is_set():
                return
            web.post_webhook(_upsert("alpha", f"R{i:03d}"))

    poster = threading.Thread(target=post_forever)
    poster.start()
    try:
        sockets = []
        for _ in range(5):
            sockets.append(_connect(web, "alpha", "tok-a", after=0))
            time.sleep(0.2)
    finally:
        poster.join(timeout=60)
        stop.set()
    wait_for(lambda: projected_up_to_head(url))
    # then: each client saw every message once, in order, across the backlog/live switch
    for ws in sockets:
        frames = _frames_until(ws, lambda fs: len(_created_keys(fs)) == 300)
        ws.close()
        assert _created_keys(frames) == [f"R{i:03d}" for i in range(300)]
        _assert_strictly_increasing([f for f in frames if f["type"] != "live"])


@pytest.mark.parametrize("cursor", ["pruned", "ahead"])
def test_a_cursor_the_feed_cannot_go_on_from_gets_reset_then_live(stack, cursor: str) -> None:
    url, web = stack
    for i in range(5):
        assert web.post_webhook(_upsert("alpha", f"P{i}")).status == 200
    wait_for(lambda: projected_up_to_head(url))
    head = sql(url, "SELECT cursor FROM feed_heads WHERE instance = 'alpha'")[0][0]
    if cursor == "pruned":  # the changes right after the client's cursor were pruned
        sql(url, "DELETE FROM feed WHERE instance = 'alpha' AND cursor <= 3")
        after = 1
    else:  # a cursor of another instance, or from before a database restore
        after = head + 500
    ws = _connect(web, "alpha", "tok-a", after=after)
    frames = _frames_until(ws, lambda fs: fs[-1]["type"] == "live")
    # then: a reset (the client reloads over HTTP) and live from the head, no partial backlog
    assert frames == [{"type": "reset"}, {"type": "live", "cursor": head}]
    assert web.post_webhook(_upsert("alpha", "AFTER")).status == 200
    live = _frames_until(ws, lambda fs: "AFTER" in _created_keys(fs))
    ws.close()
    assert live[0]["cursor"] == head + 1


def _raw_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked server frame in `data`, as far as it is complete."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, length, start = data[at] & 15, data[at + 1] & 127, at + 2
        if length == 126:
            length, start = int.from_bytes(data[start : start + 2], "big"), start + 2
        elif length == 127:
            length, start = int.from_bytes(data[start : start + 8], "big"), start + 8
        if start + length > len(data):
            break
        frames.append((opcode, data[start : start + length]))
        at = start + length
    return frames


def test_pongs_to_a_slow_reader_never_land_inside_a_data_frame(web_only) -> None:
    # given: a backlog of 200 KB frames, far more than the socket buffers hold, and a client
    # on a slow link that pings while the server waits to write the rest of a frame
    url, web = web_only
    frames_in_backlog = 40
    sql(
        url,
        """INSERT INTO feed (instance, cursor, kind, key, data)
        SELECT 'alpha', c, 'message.created', 'K' || c,
               jsonb_build_object('text', repeat('x', 200000), 'n', c)
        FROM generate_series(1, %(n)s) AS c;
        INSERT INTO feed_heads (instance, cursor) VALUES ('alpha', %(n)s)""",
        {"n": frames_in_backlog},
    )
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", web.port))
    client.settimeout(5)
    client.sendall(
        b"GET /ws?instance=alpha&token=tok-a&after=0 HTTP/1.1\r\nHost: x\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    received = b""
    for n in range(100):  # ~1.5 s of a trickle, a masked ping each time (as libraries send)
        client.sendall(bytes([0x89, 0x84, 0, 0, 0, 0]) + b"p%03d" % n)
        received += client.recv(4096)
        time.sleep(0.015)
    # then read the rest at full speed
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        chunk = client.recv(1 << 20)
        received += chunk
        if not chunk or b'"type":"live"' in received[-(len(chunk) + 64) :]:
            break
    client.settimeout(1)
    with contextlib.suppress(TimeoutError):  # the pongs still due
        while chunk := client.recv(1 << 20):
            received += chunk
    client.close()

    # then: every frame is whole, and the pongs came between them
    frames = _raw_frames(received[received.index(b"\r\n\r\n") + 4 :])
    texts = [json.loads(payload) for opcode, payload in frames if opcode == 1]
    assert {opcode for opcode, _ in frames} <= {1, 10}
    cursors = [f["cursor"] for f in texts if f["type"] != "live"]
    assert cursors == list(range(1, frames_in_backlog + 1))
    assert sum(opcode == 10 for opcode, _ in frames) > 0


def test_an_idle_socket_gets_a_keep_alive_ping_within_25_s(web_only) -> None:
    _, web = web_only
    ws = _connect(web, "alpha", "tok-a")
    ws.settimeout(30)
    started = time.monotonic()
    assert json.loads(ws.recv())["type"] == "live"
    frame = json.loads(ws.recv())
    waited = time.monotonic() - started
    ws.close()
    assert frame["type"] == "ping" and waited <= 25


def test_one_web_process_holds_more_sockets_than_its_inherited_open_files_limit(
    fresh_database_url: str,
) -> None:
    """gunicorn keeps the soft limit on open files it is started with (often 1024), which
    would cap a process near that many WebSockets; the web service raises it itself. More
    than 1,000 sockets also need worker_connections above gunicorn's default of 1,000."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2000 <= hard:  # this process holds the client ends
        resource.setrlimit(resource.RLIMIT_NOFILE, (2000, hard))
    web = start_web(fresh_database_url, API_TOKENS=TOKENS, open_files=256)
    sockets: list[websocket.WebSocket] = []
    try:
        for _ in range(1100):
            ws = _connect(web, "alpha", "tok-a")
            ws.settimeout(5)
            sockets.append(ws)
            assert json.loads(ws.recv())["type"] == "live"
    finally:
        for ws in sockets:
            ws.close()
        web.stop()
    assert len(sockets) == 1100


def test_frames_another_deployment_publishes_on_the_same_redis_never_reach_our_clients(
    stack,
) -> None:
    url, web = stack
    ws = _connect(web, "alpha", "tok-a", after=0)
    live = _frames_until(ws, lambda fs: fs[-1]["type"] == "live")[-1]["cursor"]
    # given: another deployment (its own database) on our Redis, with an instance of the
    # same name, publishing the cursor our next change will have
    other = new_database()
    redis_client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        data = {"key_id": "FOREIGN"}
        foreign = FeedItem("alpha", live + 1, "message.created", data, json.dumps(data))
        fanout.Publisher(redis_client, other)([foreign])
        # when: our own next change is made
        web.post_webhook(_upsert("alpha", "OURS"))
        frames = _frames_until(ws, lambda fs: "OURS" in _created_keys(fs))
    finally:
        ws.close()
        redis_client.close()
        drop_database(other)
    # then: the client got ours at that cursor, and never the other deployment's
    assert _created_keys(frames) == ["OURS"] and frames[0]["cursor"] == live + 1


def test_a_token_only_ever_receives_its_instances_changes(stack) -> None:
    url, web = stack
    ws = _connect(web, "alpha", "tok-a", after=0)
    _frames_until(ws, lambda fs: fs[-1]["type"] == "live")
    web.post_webhook(_upsert("beta", "SECRET"))
    web.post_webhook(_upsert("alpha", "MINE"))
    frames = _frames_until(ws, lambda fs: "MINE" in _created_keys(fs))
    ws.close()
    assert all(f["instance"] == "alpha" for f in frames)
    assert "SECRET" not in json.dumps(frames)


def test_a_token_in_the_authorization_header_opens_the_socket(stack) -> None:
    _, web = stack
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{web.port}/ws?instance=alpha&after=0",
        header=["Authorization: Bearer tok-a"],
        timeout=10,
    )
    _frames_until(ws, lambda fs: fs[-1]["type"] == "live")
    web.post_webhook(_upsert("alpha", "BY-HEADER"))
    frames = _frames_until(ws, lambda fs: "BY-HEADER" in _created_keys(fs))
    ws.close()
    assert _created_keys(frames) == ["BY-HEADER"]


@pytest.mark.parametrize(
    ("instance", "token", "status"),
    [
        ("alpha", "wrong", 401),
        ("alpha", "", 401),
        ("beta", "tok-a", 404),
        ("", "tok-a", 400),
    ],
)
def test_a_bad_request_is_refused_with_plain_http_before_the_upgrade(
    web_only, instance: str, token: str, status: int
) -> None:
    _, web = web_only
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        _connect(web, instance, token)
    assert refused.value.status_code == status


@pytest.mark.parametrize("after", ["%C2%B3", "-1", "1.5"])
def test_an_after_that_is_not_a_whole_number_is_refused_with_400_before_the_upgrade(
    web_only, after: str
) -> None:
    """ "³" (%C2%B3) is a digit to str.isdigit but not to int(): a 400, not a 500."""
    _, web = web_only
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            f"ws://127.0.0.1:{web.port}/ws?instance=alpha&token=tok-a&after={after}", timeout=15
        )
    assert refused.value.status_code == 400


def test_only_the_ws_path_upgrades(web_only) -> None:
    _, web = web_only
    answer = web.request(
        "GET",
        "/health",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert answer.status == 200 and answer.json()["status"] == "ok"


def _masked_header(opcode: int, length: int, fin: bool = True) -> bytes:
    """A client frame's header declaring `length` payload bytes, with a zero mask."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes([first, 0x80 | length, 0, 0, 0, 0])
    return bytes([first, 0x80 | 127]) + length.to_bytes(8, "big") + bytes(4)


@pytest.mark.parametrize(
    "sent",
    [
        # one frame declaring 50 MB, of which only a few bytes ever come
        _masked_header(0x2, 50_000_000) + b"\0" * 16,
        # a small text message: the socket takes none, so a flood of them cannot hold it
        _masked_header(0x1, 5) + b"\0" * 5,
    ],
    ids=["huge frame", "small message"],
)
def test_a_client_message_is_refused_with_1008_before_it_is_read(web_only, sent: bytes) -> None:
    """gevent-websocket would buffer and unmask any declared length, holding the process."""
    _, web = web_only
    client = socket.create_connection(("127.0.0.1", web.port), timeout=5)
    client.sendall(
        b"GET /ws?instance=alpha&token=tok-a HTTP/1.1\r\nHost: x\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    received = b""
    while b'"type":"live"' not in received:
        chunk = client.recv(4096)
        assert chunk, received
        received += chunk
    # when
    client.sendall(sent)
    # then: a close frame with 1008 comes promptly, while the process still answers others
    try:
        while not any(op == 8 for op, _ in _raw_frames(received.split(b"\r\n\r\n", 1)[1])):
            chunk = client.recv(4096)
            if not chunk:
                break
            received += chunk
        health = web.request("GET", "/health", timeout=5)
    finally:
        client.close()
    closes = [data for op, data in _raw_frames(received.split(b"\r\n\r\n", 1)[1]) if op == 8]
    assert closes and closes[0][:2] == (1008).to_bytes(2, "big"), received[-200:]
    assert health.status == 200


@pytest.mark.parametrize("fault", ["down", "not migrated"])
def test_a_socket_the_database_cannot_serve_is_closed_with_try_again_later(
    fresh_database_url: str, fault: str
) -> None:
    proxy = TcpProxy(5432)
    web = start_web(fresh_database_url.replace(":5432/", f":{proxy.port}/"), API_TOKENS=TOKENS)
    try:
        if fault == "down":
            proxy.cut()
        else:
            sql(fresh_database_url, "ALTER TABLE feed RENAME TO feed_not_yet")
        ws = _connect(web, "alpha", "tok-a", after=0)
        op, data = _read_until_close(ws)
    finally:
        web.stop()
        proxy.cut()
    # a close code the client can act on (back off, come back), not a dropped connection
    assert int.from_bytes(data[:2], "big") == 1013


def test_after_a_web_restart_the_client_resumes_with_exactly_the_missed_changes(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    worker = start_worker(url)
    old = start_web(url, API_TOKENS=TOKENS)
    new = start_web(url, API_TOKENS=TOKENS)  # the deploy's new instance, overlapping
    try:
        ws = _connect(old, "alpha", "tok-a", after=0)
        old.post_webhook(_upsert("alpha", "BEFORE"))
        seen = _frames_until(ws, lambda fs: "BEFORE" in _created_keys(fs))
        last = max(f["cursor"] for f in seen)
        # when: the old web process gets SIGTERM
        sigterm_at = time.monotonic()
        old.process.send_signal(signal.SIGTERM)
        op, data = _read_until_close(ws)
        closed_after = time.monotonic() - sigterm_at
        # and changes land while the client is away
        for i in range(10):
            assert new.post_webhook(_upsert("alpha", f"AWAY{i}")).status == 200
        # then: 1012 came promptly, and resuming from the last cursor gives exactly the gap
        assert int.from_bytes(data[:2], "big") == 1012
        assert closed_after < 1.0, f"close frame after {closed_after:.2f} s"
        resumed = _connect(new, "alpha", "tok-a", after=last)
        frames = _frames_until(resumed, lambda fs: len(_created_keys(fs)) == 10)
        resumed.close()
        assert _created_keys(frames) == [f"AWAY{i}" for i in range(10)]
        assert min(f["cursor"] for f in frames if f["type"] != "live") == last + 1
        _assert_strictly_increasing([f for f in frames if f["type"] != "live"])
    finally:
        old.stop()
        new.stop()
        worker.stop()


def test_a_slow_webhook_in_flight_at_sigterm_still_gets_its_200(fresh_database_url: str) -> None:
    web = start_web(fresh_database_url)
    body = _upsert("slow", "SLOW1")
    try:
        conn = socket.create_connection(("127.0.0.1", web.port), timeout=15)
        head = (
            f"POST /webhooks/evolution HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            f"\r\nAuthorization: Bearer {WEBHOOK_TOKEN}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n"
        ).encode()
        conn.sendall(head + body[:20])
        time.sleep(0.3)
        web.process.send_signal(signal.SIGTERM)
        # then: new connections are refused while the request in flight is still open
        wait_for(lambda: not _accepts(web.port), timeout=5)
        conn.sendall(body[20:])
        answer = conn.recv(4096).decode()
        conn.close()
        assert answer.startswith("HTTP/1.1 200"), answer[:200]
    finally:
        web.stop()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_a_socket_upgraded_after_sigterm_on_a_kept_alive_connection_is_closed_with_1012(
    fresh_database_url: str,
) -> None:
    """A client whose keep-alive connection outlives SIGTERM may still send an upgrade in the
    idle grace, after every open socket was closed: it must not be taken as a live socket."""
    web = start_web(fresh_database_url, API_TOKENS=TOKENS)
    try:
        # given: two kept-alive connections to the single worker process
        kept = socket.create_connection(("127.0.0.1", web.port), timeout=5)
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_answer(kept).startswith(b"HTTP/1.1 200")
        probe = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
        probe.request("GET", "/health")
        probe.getresponse().read()
        # when: SIGTERM, and the worker is seen draining
        web.process.send_signal(signal.SIGTERM)
        wait_for(lambda: _ready_status(probe) == 503, timeout=5, interval=0.02)
        # and an upgrade arrives on the other connection
        kept.sendall(
            b"GET /ws?instance=alpha&token=tok-a HTTP/1.1\r\nHost: x\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        received = b""
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in received or not _raw_frames(received.split(b"\r\n\r\n", 1)[1]):
            chunk = kept.recv(4096)
            received += chunk
            if not chunk or time.monotonic() > deadline:
                break
        kept.close()
        probe.close()
    finally:
        web.stop()
    # then: refused, or upgraded only to be closed with 1012 before any frame of the feed
    if received.startswith(b"HTTP/1.1 101"):
        opcode, payload = _raw_frames(received.split(b"\r\n\r\n", 1)[1])[0]
        assert (opcode, payload[:2]) == (8, (1012).to_bytes(2, "big")), payload
    else:
        assert not received.startswith(b"HTTP/1.1 1"), received[:200]


def _read_answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer with a Content-Length body."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, answer
        answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, answer
        body += chunk
    return head + b"\r\n\r\n" + body


def _ready_status(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/health/ready")
    answer = conn.getresponse()
    answer.read()
    return answer.status


def test_clients_lose_nothing_when_redis_restarts_under_them(fresh_database_url: str) -> None:
    url = fresh_database_url
    port = free_port()
    redis = _redis_server(port)
    redis_url = f"redis://127.0.0.1:{port}/0"
    worker = start_worker(url, REDIS_URL=redis_url)
    web = start_web(url, API_TOKENS=TOKENS, REDIS_URL=redis_url)
    try:
        ws = _connect(web, "alpha", "tok-a", after=0)
        _frames_until(ws, lambda fs: fs[-1]["type"] == "live")
        web.post_webhook(_upsert("alpha", "UP1"))
        _frames_until(ws, lambda fs: "UP1" in _created_keys(fs))
        # when: Redis goes away while changes are made, then comes back empty
        redis.kill()
        redis.wait()
        for i in range(5):
            web.post_webhook(_upsert("alpha", f"DOWN{i}"))
        wait_for(lambda: projected_up_to_head(url))
        redis = _redis_server(port)
        for i in range(5):
            web.post_webhook(_upsert("alpha", f"BACK{i}"))
        # then: the client gets every change once, in order
        expected = [f"DOWN{i}" for i in range(5)] + [f"BACK{i}" for i in range(5)]
        frames = _frames_until(ws, lambda fs: len(_created_keys(fs)) == 10)
        ws.close()
        assert _created_keys(frames) == expected
        _assert_strictly_increasing(frames)
    finally:
        web.stop()
        worker.stop()
        redis.kill()


def test_a_live_frame_that_skips_a_cursor_gets_the_skipped_change_from_the_feed_first(
    fresh_database_url: str,
) -> None:
    """Redis lost the frame of cursor 1 and delivered cursor 2: the socket sends 1 (read from
    the feed table), then 2, each once, before anything later."""
    url = fresh_database_url
    web = start_web(url, API_TOKENS=TOKENS)  # no worker: this test writes the feed itself
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    [(scope,)] = sql(url, "SELECT id FROM feed_scope")
    channels = fanout.prefix(scope)
    try:
        # given: the web process subscribed to Redis (a first socket starts it; a probe on a
        # channel nobody follows counts it), then a socket live on alpha at cursor 0
        first = _connect(web, "beta", "tok-b")
        wait_for(lambda: client.publish(channels + "nobody", "probe") > 0, timeout=10)
        ws = _connect(web, "alpha", "tok-a")
        assert _frames_until(ws, lambda fs: fs[-1]["type"] == "live") == [
            {"type": "live", "cursor": 0}
        ]
        # when: the feed holds cursors 1 and 2, but only 2's frame is published, then 3's
        _append_feed(url, "alpha", [1, 2])
        client.publish(channels + "alpha", _frame("alpha", 2))
        _append_feed(url, "alpha", [3])
        client.publish(channels + "alpha", _frame("alpha", 3))
        frames = _frames_until(ws, lambda fs: fs[-1].get("cursor") == 3, limit=10)
        ws.close()
        first.close()
    finally:
        client.close()
        web.stop()
    # then: the skipped change came first, and nothing came twice
    assert [f["cursor"] for f in frames] == [1, 2, 3]
    assert _created_keys(frames) == ["G1", "G2", "G3"]


def _append_feed(url: str, instance: str, cursors: list[int]) -> None:
    """Write feed rows and move the head, as a projector batch commits them."""
    sql(
        url,
        """INSERT INTO feed (instance, cursor, kind, key, data)
        SELECT %(instance)s, c, 'message.created', 'G' || c, jsonb_build_object('key_id', 'G' || c)
        FROM unnest(%(cursors)s::bigint[]) AS c;
        INSERT INTO feed_heads (instance, cursor) VALUES (%(instance)s, %(head)s)
        ON CONFLICT (instance) DO UPDATE SET cursor = EXCLUDED.cursor""",
        {"instance": instance, "cursors": cursors, "head": max(cursors)},
    )


def _frame(instance: str, cursor: int) -> str:
    """The live frame the projector publishes for a row `_append_feed` wrote."""
    return fanout.frame(cursor, "message.created", instance, json.dumps({"key_id": f"G{cursor}"}))


def _read_until_close(ws: websocket.WebSocket) -> tuple[int, bytes]:
    for _ in range(1000):
        op, data = ws.recv_data(control_frame=True)
        if op == websocket.ABNF.OPCODE_CLOSE:
            return op, data
    raise AssertionError("no close frame")


def _redis_server(port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: _answers(port), timeout=10)
    return server


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def test_sigterm_ends_the_web_process_without_waiting_out_the_graceful_timeout(
    fresh_database_url: str,
) -> None:
    """Open sockets and idle keep-alive connections must not hold a draining worker."""
    import http.client

    from pipeline.web import GRACEFUL_TIMEOUT_SECONDS

    web = start_web(fresh_database_url, API_TOKENS=TOKENS, WEB_CONCURRENCY="2")
    sockets = [_connect(web, "alpha", "tok-a") for _ in range(10)]
    idle = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
    idle.request("GET", "/health")
    idle.getresponse().read()
    started = time.monotonic()
    web.process.send_signal(signal.SIGTERM)
    web.process.wait(timeout=GRACEFUL_TIMEOUT_SECONDS + 10)
    elapsed = time.monotonic() - started
    assert elapsed < GRACEFUL_TIMEOUT_SECONDS, f"exited after {elapsed:.1f} s"
    assert all(_read_until_close(ws)[1][:2] == (1012).to_bytes(2, "big") for ws in sockets)


def test_a_change_posted_to_one_web_replica_reaches_sockets_on_another(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    worker = start_worker(url)
    one = start_web(url, API_TOKENS=TOKENS)
    two = start_web(url, API_TOKENS=TOKENS)
    try:
        ws = _connect(one, "alpha", "tok-a")
        _frames_until(ws, lambda fs: fs[-1]["type"] == "live")
        assert two.post_webhook(_upsert("alpha", "ACROSS")).status == 200
        frames = _frames_until(ws, lambda fs: "ACROSS" in _created_keys(fs))
        ws.close()
        assert _created_keys(frames) == ["ACROSS"]
    finally:
        one.stop()
        two.stop()
        worker.stop()


def test_a_live_socket_keeps_every_change_once_through_a_database_outage_of_its_web(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    # given: a web whose database connections we can cut, and a socket live on it; another
    # web instance (here: the store directly) and the worker keep their database
    proxy = TcpProxy(5432)
    web = start_web(url.replace(":5432/", f":{proxy.port}/"), API_TOKENS=TOKENS)
    worker = start_worker(url)
    store = EventStore(Pool(url, size=1))
    try:
        ws = _connect(web, "alpha", "tok-a", after=0)
        _frames_until(ws, lambda fs: fs[-1]["type"] == "live")
        store.append([parse_webhook(_upsert("alpha", "UP0"))])
        _frames_until(ws, lambda fs: "UP0" in _created_keys(fs))
        # when: that web loses its database while changes go on, and gets it back
        proxy.cut()
        store.append([parse_webhook(_upsert("alpha", f"DOWN{i}")) for i in range(5)])
        wait_for(lambda: projected_up_to_head(url))
        # a client connecting meanwhile is told to come back later
        late = _connect(web, "alpha", "tok-a", after=1)
        assert int.from_bytes(_read_until_close(late)[1][:2], "big") == 1013
        proxy = proxy.restore()
        wait_for(lambda: web.request("GET", "/health/ready").status == 200, timeout=30)
        for i in range(5):
            assert web.post_webhook(_upsert("alpha", f"BACK{i}")).status == 200
        # then: the live socket got every change once, in order, and so does the late one
        expected = [f"DOWN{i}" for i in range(5)] + [f"BACK{i}" for i in range(5)]
        frames = _frames_until(ws, lambda fs: len(_created_keys(fs)) == 10)
        again = _connect(web, "alpha", "tok-a", after=1)
        late_frames = _frames_until(again, lambda fs: len(_created_keys(fs)) == 10)
        ws.close()
        again.close()
    finally:
        web.stop()
        worker.stop()
        proxy.cut()
    assert _created_keys(frames) == expected
    assert _created_keys(late_frames) == expected
    _assert_strictly_increasing(frames)
    _assert_strictly_increasing(late_frames)
