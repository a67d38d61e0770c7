"""`make run` (`python -m pipeline dev`): stopping it stops everything it started."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, WEBHOOK_TOKEN, wait_for

pytestmark = pytest.mark.services


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_to_make_run_stops_the_web_and_worker_it_started(
    fresh_database_url: str, stop: signal.Signals
) -> None:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dev = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "dev"],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": fresh_database_url,
            "PORT": str(port),
            "WEBHOOK_TOKEN": WEBHOOK_TOKEN,
            "API_TOKENS": "dev-test-token:*",
            "ADMIN_TOKEN": "dev-test-admin",
            "WEB_CONCURRENCY": "1",
            "WORKER_THREADS": "2",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    children: list[int] = []
    try:
        wait_for(lambda: _answers(port), timeout=60)
        children = wait_for(lambda: len(_children(dev.pid)) == 2 and _children(dev.pid))
        # when: the supervisor alone gets the signal (not its process group)
        dev.send_signal(stop)
        assert dev.wait(timeout=45) == 0
        # then: neither child outlives it, and the port is free again
        assert [pid for pid in children if _alive(pid)] == []
        assert not _answers(port)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if dev.poll() is None:
            dev.kill()
            dev.wait(timeout=10)
