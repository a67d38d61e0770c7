"""GET /health and /health/ready: bounded in time, honest about every dependency."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import WebServer, start_web
from tests.netutil import Blackhole, TcpProxy, free_port

pytestmark = pytest.mark.services


def test_ready_answers_200_with_every_check_when_all_dependencies_answer(web: WebServer) -> None:
    answer = web.request("GET", "/health/ready")
    body = answer.json()
    assert answer.status == 200, body
    assert body["status"] == "ready" and body["draining"] is False
    for name in ("database", "redis", "rabbitmq"):
        assert body[name] == "connected"
    assert body["migrations"].startswith("at head")
    assert isinstance(body["workers"], int) and "projection_lag_seconds" in body
    assert body["timestamp"].endswith("Z")


def test_liveness_answers_200_when_the_database_answers(web: WebServer) -> None:
    answer = web.request("GET", "/health")
    assert answer.status == 200 and answer.json()["database"] == "connected"


@pytest.mark.parametrize("dependency", ["REDIS_URL", "RABBITMQ_URL"])
def test_ready_answers_503_within_2_s_when_a_dependency_never_replies(
    database_url: str, dependency: str
) -> None:
    hole = Blackhole()
    url = {
        "REDIS_URL": f"redis://127.0.0.1:{hole.port}/0",
        "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{hole.port}/%2F",
    }[dependency]
    server = start_web(database_url, **{dependency: url})
    try:
        started = time.monotonic()
        answer = server.request("GET", "/health/ready", timeout=10)
        elapsed = time.monotonic() - started
        body = answer.json()
        name = {"REDIS_URL": "redis", "RABBITMQ_URL": "rabbitmq"}[dependency]
        assert answer.status == 503 and body["status"] == "not_ready"
        assert body["failing"] == [name] and body[name] != "connected"
        if name == "redis":  # where worker heartbeats are: the figure is null, not a reason
            assert body["workers"] is None and body["errors"]["workers"]
        assert elapsed < 2.0, f"took {elapsed:.2f} s"
        assert "guest:guest" not in answer.body.decode()
    finally:
        server.stop()
        hole.close()


def test_probes_answer_503_within_bounds_when_the_database_is_gone(database_url: str) -> None:
    proxy = TcpProxy(5432)
    server = start_web(database_url.replace(":5432/", f":{proxy.port}/"))
    try:
        assert server.request("GET", "/health").status == 200
        proxy.cut()
        started = time.monotonic()
        live = server.request("GET", "/health", timeout=10)
        live_elapsed = time.monotonic() - started
        started = time.monotonic()
        ready = server.request("GET", "/health/ready", timeout=10)
        ready_elapsed = time.monotonic() - started
        assert live.status == 503 and live_elapsed < 2.0
        assert ready.status == 503 and "database" in ready.json()["failing"]
        assert ready_elapsed < 2.0
    finally:
        server.stop()
        proxy.cut()


def test_probes_of_a_dependency_that_is_down_log_no_traceback(database_url: str) -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    server = start_web(database_url, capture_output=True, REDIS_URL=redis_url)
    try:
        for _ in range(3):
            assert server.request("GET", "/health/ready").status == 503
    finally:
        server.stop()
    output = server.process.stdout.read().decode()
    assert "Traceback" not in output, output[-2000:]


def test_ready_answers_503_draining_from_sigterm_on(database_url: str) -> None:
    server = start_web(database_url)
    try:
        # given: a keep-alive connection to the single worker process
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/health/ready")
        first = conn.getresponse()
        first.read()
        assert first.status == 200
        [worker_pid] = _children(server.process.pid)
        # when: the worker gets SIGTERM
        os.kill(worker_pid, signal.SIGTERM)
        time.sleep(0.2)  # within the grace before idle connections are closed
        # then: readiness on that connection says draining
        conn.request("GET", "/health/ready")
        second = conn.getresponse()
        body = json.loads(second.read())
        conn.close()
        assert second.status == 503 and body["draining"] is True
        assert "draining" in body["failing"]
    finally:
        server.stop()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]
