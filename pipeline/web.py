"""The web service: gunicorn with the gevent-websocket worker class, bound to 0.0.0.0:$PORT."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from pipeline.config import Settings

# Railway's drain window must exceed this (railway.json drainingSeconds).
GRACEFUL_TIMEOUT_SECONDS = 10


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
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from api.app import get_app

        return get_app()


def serve(settings: Settings, bind: str | None = None) -> None:
    """Run the web service in the foreground until SIGTERM or SIGINT."""
    WebApplication(settings, bind).run()
