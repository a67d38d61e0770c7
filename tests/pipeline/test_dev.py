"""`make run` (`python -m pipeline dev`): stopping it stops everything it started."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import dev
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


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _dev(url: str, port: int, output: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "dev"],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": url,
            "PORT": str(port),
            "WEBHOOK_TOKEN": WEBHOOK_TOKEN,
            "API_TOKENS": "dev-test-token:*",
            "ADMIN_TOKEN": "dev-test-admin",
            "WEB_CONCURRENCY": "1",
            "WORKER_THREADS": "2",
        },
        stdout=output,
        stderr=output,
        text=True,
        start_new_session=True,
    )


@contextlib.contextmanager
def _running(dev: subprocess.Popen[str], port: int) -> Iterator[list[int]]:
    """Wait until web answers and both children run; kill whatever is left at the end."""
    children: list[int] = []
    try:
        wait_for(lambda: _answers(port), timeout=60)
        children = wait_for(lambda: len(_children(dev.pid)) == 2 and _children(dev.pid))
        yield children
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if dev.poll() is None:
            dev.kill()
            dev.wait(timeout=10)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_to_make_run_stops_the_web_and_worker_it_started(
    fresh_database_url: str, stop: signal.Signals
) -> None:
    port = _free_port()
    dev = _dev(fresh_database_url, port)
    with _running(dev, port) as children:
        # when: the supervisor alone gets the signal (not its process group)
        dev.send_signal(stop)
        assert dev.wait(timeout=45) == 0
        # then: neither child outlives it, and the port is free again
        assert [pid for pid in children if _alive(pid)] == []
        assert not _answers(port)


def test_a_service_that_dies_under_make_run_is_named_and_the_run_fails(
    fresh_database_url: str,
) -> None:
    port = _free_port()
    dev = _dev(fresh_database_url, port, output=subprocess.PIPE)
    with _running(dev, port) as children:
        # when: one child dies on its own
        worker = max(children, key=lambda pid: "worker" in Path(f"/proc/{pid}/cmdline").read_text())
        os.killpg(worker, signal.SIGKILL)
        out, err = dev.communicate(timeout=45)
        # then: the run says which one and fails, and stops the other
        assert dev.returncode == 1
        assert f"zapline: worker exited (code {-signal.SIGKILL}); stopping web" in err
        assert not _answers(port)


def test_make_run_on_a_taken_port_ends_with_one_line_before_starting_anything(
    fresh_database_url: str,
) -> None:
    with contextlib.closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dev = _dev(fresh_database_url, port, output=subprocess.PIPE)
        out, err = dev.communicate(timeout=60)
    assert dev.returncode == 1
    assert err.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert "WEBHOOK_TOKEN" not in out, "no banner for a run that cannot start"


def test_make_run_with_a_vhost_rabbitmq_refuses_ends_with_one_line(
    fresh_database_url: str,
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": fresh_database_url,
        "PORT": str(_free_port()),
        "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5672/no_such_vhost_here",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "dev"],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: RabbitMQ refused the login: check the user, password and vhost of RABBITMQ_URL"
    ]
    assert "WEBHOOK_TOKEN" not in done.stdout, "nothing started"


def test_the_readme_shows_the_webhook_make_run_offers() -> None:
    assert dev.SAMPLE in (ROOT / "README.md").read_text()
