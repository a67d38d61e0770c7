"""The connection handler and gunicorn worker class of the web service."""

from __future__ import annotations

from typing import Any

import gevent
from gevent.pywsgi import WSGIHandler
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler

from api.live import PRECHECK, WS_PATH


class ZaplineHandler(WebSocketHandler):
    """Upgrades only `GET /ws`, and only after the app has authorised the request.

    gevent-websocket upgrades any path and answers 101 before the app runs; a bad token must
    get its 401 as a plain HTTP answer instead (contract "Live push").
    """

    def run_application(self) -> Any:
        if self.environ.get("PATH_INFO") != WS_PATH or not _asks_upgrade(self.environ):
            return WSGIHandler.run_application(self)
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


class ZaplineWorker(GeventWebSocketWorker):
    """The gevent-websocket worker, told about SIGTERM as soon as it arrives.

    gunicorn has no hook at the start of a graceful shutdown and keeps WebSockets open until
    graceful_timeout, then drops them without a close frame. Here readiness turns 503 and
    every socket gets close code 1012 the moment SIGTERM lands (design.md invariant 10).
    """

    wsgi_handler = ZaplineHandler

    def handle_exit(self, sig: int, frame: Any) -> None:
        from api.app import LIFECYCLE  # imported in the worker, after fork

        gevent.spawn(LIFECYCLE.start_draining)
        super().handle_exit(sig, frame)


def _asks_upgrade(environ: dict[str, Any]) -> bool:
    return environ.get("HTTP_UPGRADE", "").lower() == "websocket"
