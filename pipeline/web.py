"""The web service: gunicorn with the gevent-websocket worker class, bound to 0.0.0.0:$PORT."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from gunicorn import util
from gunicorn.app.base import BaseApplication

from events.errors import ZaplineError
from pipeline.config import Settings

# Railway's drain window must exceed this (railway.json drainingSeconds).
GRACEFUL_TIMEOUT_SECONDS = 10


class CannotListen(ZaplineError):
    """The listen address is taken or not ours to bind."""


class WebApplication(BaseApplication):
    """gunicorn configured in code, so `python -m pipeline web` needs no config file."""

    def __init__(self, settings: Settings, bind: str | None = None) -> None:
        self._settings = settings
        self._bind = bind or f"0.0.0.0:{settings.port}"
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": [self._bind],
            "workers": self._settings.web_concurrency,
            "worker_class": "api.server.ZaplineWorker",
            "worker_connections": self._settings.web_worker_connections,
            "graceful_timeout": GRACEFUL_TIMEOUT_SECONDS,
            "timeout": 30,
            "keepalive": 5,
            "control_socket_disable": True,
            "accesslog": None,  # api/requestlog.py writes one JSON line per request
            "errorlog": "-",
            "proc_name": "zapline-web",
            "child_exit": _forget_worker_metrics,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from api.app import get_app

        return get_app()


# Descriptors a worker needs besides its clients' sockets: database, Redis, RabbitMQ, files.
SPARE_FILES = 256


def serve(settings: Settings, bind: str | None = None) -> None:
    """Run the web service in the foreground until SIGTERM or SIGINT.

    Raises:
        CannotListen: the address is taken (checked first: gunicorn would retry for 5 s and
            log a dozen lines).
    """
    bind = bind or f"0.0.0.0:{settings.port}"
    check_free(bind)
    _allow_open_files(settings.web_worker_connections + SPARE_FILES)
    made = _prepare_metrics_dir(settings.prometheus_multiproc_dir)
    try:
        WebApplication(settings, bind).run()
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def check_free(bind: str) -> None:
    """Fail with one line now if `bind` is taken, instead of gunicorn's retries and logs."""
    address = util.parse_address(bind)
    if not isinstance(address, tuple):
        return  # a unix socket or an inherited descriptor: gunicorn's to judge
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As gunicorn binds: a port whose old connections linger in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise CannotListen(f"cannot listen on {bind}: {error.strerror or error}") from None


def _allow_open_files(wanted: int) -> None:
    """Raise the soft limit on open files towards `wanted` (the workers inherit it).

    gunicorn leaves it as it finds it, and a soft limit of 1024 is common: each worker would
    then hold about a thousand WebSockets whatever WEB_WORKER_CONNECTIONS says.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    allowed = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if allowed > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (allowed, hard))
    if allowed < wanted:
        print(
            f"zapline-web: open files are capped at {allowed} (hard limit), below the {wanted}"
            " WEB_WORKER_CONNECTIONS needs; raise the container's nofile limit",
            file=sys.stderr,
        )


def _prepare_metrics_dir(configured: str | None) -> Path | None:
    """Give the gunicorn workers one empty folder to keep their metrics in.

    prometheus-client's multiprocess mode reads PROMETHEUS_MULTIPROC_DIR when it is first
    imported, which happens in each worker after fork; files left by an earlier run would add
    their counts to ours, so the folder is emptied first. Returns the folder if made here.
    """
    folder = Path(configured or tempfile.mkdtemp(prefix="zapline-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return None if configured else folder


def _forget_worker_metrics(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
