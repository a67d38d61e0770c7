"""Structured logs: one JSON object per line on stdout, never a secret in them."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; fields passed as `extra={"fields": {...}}` join it."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Formats a record as one line for a person at a terminal, its fields appended."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = ", ".join(f"{name}={value}" for name, value in fields.items())
        line = f"{record.levelname.lower()}: {record.getMessage()}" + (
            f" ({extra})" if extra else ""
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_terminal(level: int = logging.WARNING) -> None:
    """Send our warnings and errors to stderr as text lines: for the operator's commands,
    whose stdout carries their report, and whose failures end in one line of their own (so
    the libraries' logs of the same failure stay out)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter())
    ours = logging.getLogger("zapline")
    ours.handlers[:] = [handler]
    ours.setLevel(level)
    ours.propagate = False


def configure(level: int = logging.INFO) -> None:
    """Send every log record to stdout as JSON lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pika logs every connection step at INFO, including the URLs it dials, and six ERROR
    # lines for each failed attempt, which Dramatiq's consumers (and our publisher) report in
    # one line of their own: a refused vhost gave ~30 lines a second.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    # gevent-websocket logs an access line with the query string, where `?token=` lives.
    logging.getLogger("geventwebsocket.handler").setLevel(logging.WARNING)
