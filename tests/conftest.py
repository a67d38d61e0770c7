"""Shared fixtures: a fresh migrated database per session, real web servers, fixture bodies."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis

from migrations.runner import migrate
from pipeline import fanout
from projections.catchup import catch_up
from tests.netutil import free_port

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "evolution"
BASE_URL = os.environ.get("ZAPLINE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/")
WEBHOOK_TOKEN = "test-webhook-token"
JWT_SECRET = "test-jwt-secret-of-a-proper-length-32b"


# This run's own vhost: another suite running at the same time has its own too.
TEST_VHOST = f"zapline_test_{os.getpid()}"


def pytest_configure(config: pytest.Config) -> None:
    """Keep the suite off what a developer's `make run` (or another run of the suite) uses:
    a RabbitMQ vhost of its own (another worker on ours would take our media jobs) and Redis
    database 15 (a `make run` worker's heartbeat would count as one of ours). Variables set
    by the caller win."""
    if "RABBITMQ_URL" not in os.environ and _ensure_vhost(TEST_VHOST):
        os.environ["RABBITMQ_URL"] = f"amqp://guest:guest@127.0.0.1:5672/{TEST_VHOST}"
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")


def pytest_unconfigure(config: pytest.Config) -> None:
    if os.environ.get("RABBITMQ_URL", "").endswith("/" + TEST_VHOST):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["rabbitmqctl", "-q", "delete_vhost", TEST_VHOST], capture_output=True, timeout=60
            )


def _ensure_vhost(name: str) -> bool:
    """Create a local RabbitMQ vhost for guest unless it exists; False if we cannot."""
    try:
        listed = subprocess.run(
            ["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, timeout=60, check=True
        )
        if name not in listed.stdout.decode().split():
            for command in (
                ["add_vhost", name],
                ["set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
            ):
                subprocess.run(["rabbitmqctl", "-q", *command], timeout=60, check=True)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def fixture_bodies() -> dict[str, bytes]:
    """Every captured Evolution webhook body, by file name."""
    return {p.name: p.read_bytes() for p in sorted(FIXTURES.glob("*.json"))}


def new_database() -> str:
    """Create and migrate an empty database; return its URL."""
    url = BASE_URL.rstrip("/") + "/zapline_test_" + uuid.uuid4().hex[:10]
    migrate(url, log=lambda _: None)
    return url


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = psycopg2.connect(BASE_URL.rstrip("/") + "/postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = new_database()
    yield url
    drop_database(url)


@pytest.fixture
def fresh_database_url() -> Iterator[str]:
    url = new_database()
    yield url
    drop_database(url)


def sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement in its own transaction and return its rows."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebServer:
    """A real `python -m pipeline web` process on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            headers = {k.lower(): v for k, v in answer.getheaders()}
            return Response(answer.status, headers, answer.read())
        finally:
            conn.close()

    def post_webhook(
        self, body: bytes, path: str = "/webhooks/evolution", headers: dict[str, str] | None = None
    ) -> Response:
        auth = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"} if headers is None else headers
        return self.request("POST", path, body, {"Content-Type": "application/json", **auth})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_web(
    database_url: str, *, capture_output: bool = False, open_files: int | None = None, **env: str
) -> WebServer:
    """Start the web service and wait until it answers /health (bounded); with
    `capture_output`, its stdout and stderr together are in `process.stdout`; with
    `open_files`, it starts under that soft limit on open files."""
    port = free_port()
    full_env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "WEBHOOK_JWT_SECRET": JWT_SECRET,
        "WEB_CONCURRENCY": "1",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "web", "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE if capture_output else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if capture_output else subprocess.DEVNULL,
        preexec_fn=None if open_files is None else lambda: _limit_open_files(open_files),
    )
    server = WebServer(process, port, full_env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"web exited with {process.returncode}")
        try:
            server.request("GET", "/health", timeout=2)
            return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError("web did not answer within 30 s")


def _limit_open_files(soft: int) -> None:
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    )


@pytest.fixture(scope="session")
def web(database_url: str) -> Iterator[WebServer]:
    server = start_web(database_url, MAX_BODY_BYTES="1048576")
    yield server
    server.stop()


def with_instance(body: bytes, instance: str) -> bytes:
    """The same webhook as if it came from another instance (keeps tests independent)."""
    payload = json.loads(body)
    target = payload["body"] if "body" in payload and "event" not in payload else payload
    target["instance"] = instance
    return json.dumps(payload).encode()


@dataclass
class Worker:
    """A real `python -m pipeline worker` (dramatiq main process and its children)."""

    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown code runs."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the main process, as Railway does; SIGKILL after `timeout` seconds.

        Not to the group: dramatiq forwards the signal to its workers, and a worker that gets
        a second SIGTERM exits at once, as killed.
        """
        if self.process.poll() is None:
            os.kill(self.process.pid, 15)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):  # no child may outlive the test
            os.killpg(self.process.pid, 9)
        return int(self.process.returncode)


def start_worker(database_url: str, **env: str) -> Worker:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "worker"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url, "WORKER_THREADS": "2", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return Worker(process)


def wait_for(check: Any, timeout: float = 30, interval: float = 0.05) -> Any:
    """Poll `check()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        time.sleep(interval)


def project_all(conn: Any, url: str, planner: Any = None) -> int:
    """Catch up until nothing is left, however long an unrelated transaction holds reads back;
    return how many events were projected.

    The gap-safe read waits for every older writing transaction on the server, and other
    databases on a shared server may hold one open for a while.
    """
    projected = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        projected += catch_up(conn, planner)
        if projected_up_to_head(url):
            return projected
    raise AssertionError("not caught up within 60 s")


@contextlib.contextmanager
def feed_channel(url: str, instance: str) -> Iterator[Callable[[str, float], str]]:
    """Listen to an instance's live channel in Redis; yield `read(until, seconds)`, which
    returns what was published once `until` is in it, or when the time is up."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    [(scope,)] = sql(url, "SELECT id FROM feed_scope")
    pubsub.subscribe(fanout.prefix(scope) + instance)

    def read(until: str, seconds: float) -> str:
        published = ""
        deadline = time.monotonic() + seconds
        while until not in published and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                published += message["data"].decode()
        return published

    try:
        yield read
    finally:
        pubsub.close()
        client.close()


def projected_up_to_head(url: str) -> bool:
    """True when no committed event lies after the messages projection's checkpoint.

    Compared in read order, (transaction id, position): positions alone do not say it,
    since concurrent transactions take positions in another order than they commit.
    """
    rows = sql(
        url,
        "SELECT NOT EXISTS (SELECT 1 FROM events e, checkpoints c"
        " WHERE c.projection = 'messages'"
        " AND (e.txid, e.position) > (c.txid::text::xid8, c.position))",
    )
    return bool(rows[0][0])
