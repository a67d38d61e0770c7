"""RequestLog: a request id on every request and one JSON log line per response."""

from __future__ import annotations

import logging
import os
import time

import falcon

log = logging.getLogger("zapline.request")


class RequestLog:
    """Falcon middleware; logs the path without its query string, which may hold a token."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        req.context.request_id = (
            req.get_header("X-Request-Id")
            or req.get_header("X-Railway-Request-Id")
            or os.urandom(12).hex()
        )[:100]

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, succeeded: bool
    ) -> None:
        resp.set_header("X-Request-Id", req.context.request_id)
        fields = {
            "request_id": req.context.request_id,
            "method": req.method,
            "path": req.path,
            "status": int(resp.status_code),
            "ms": round((time.perf_counter() - req.context.started) * 1000, 2),
        }
        for extra in ("position", "quarantine_id"):
            if extra in req.context:
                fields[extra] = req.context[extra]
        log.info("request", extra={"fields": fields})
