"""The web service: gunicorn with the gevent-websocket worker class, bound to 0.0.0.0:$PORT."""

from __future__ import annotations

from typing import Any

from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from gunicorn.app.base import BaseApplication

from pipeline.config import Settings

# Railway's drain window must exceed this (railway.json drainingSeconds).
GRACEFUL_TIMEOUT_SECONDS = 10


class ZaplineWorker(GeventWebSocketWorker):
    """The gevent-websocket worker, told about SIGTERM as soon as it arrives.

    gunicorn has no hook at the start of a graceful shutdown; readiness must answer 503 from
    the moment SIGTERM lands (design.md invariant 10), so we flip it here.
    """

    def handle_exit(self, sig: int, frame: Any) -> None:
        from api.app import LIFECYCLE

        LIFECYCLE.draining = True
        super().handle_exit(sig, frame)


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
            "worker_class": "pipeline.web.ZaplineWorker",
            "worker_connections": self._settings.web_worker_connections,
            "graceful_timeout": GRACEFUL_TIMEOUT_SECONDS,
            "timeout": 30,
            "keepalive": 5,
            "control_socket_disable": True,
            "accesslog": None,  # api/requestlog.py writes one JSON line per request
            "errorlog": "-",
            "proc_name": "zapline-web",
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from api.app import get_app

        return get_app()


def serve(settings: Settings, bind: str | None = None) -> None:
    """Run the web service in the foreground until SIGTERM or SIGINT."""
    WebApplication(settings, bind).run()
