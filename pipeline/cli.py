"""python -m pipeline: web, migrate, dev. Exit 0 on success, 1 on failure, 2 on bad usage."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from events.errors import ZaplineError
from pipeline.config import Settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; failures end with a one-line reason on stderr."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    web = commands.add_parser("web", help="run the web service (gunicorn, 0.0.0.0:$PORT)")
    web.add_argument("--bind", help="override the listen address, e.g. 127.0.0.1:8001")
    commands.add_parser("worker", help="run the worker service (Dramatiq, all actors)")
    commands.add_parser("migrate", help="apply pending database migrations")
    commands.add_parser("dev", help="run everything locally in the foreground (make run)")
    args = parser.parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "web": _web,
        "worker": _worker,
        "migrate": _migrate,
        "dev": _dev,
    }
    try:
        settings = Settings.from_env()
        return handlers[args.command](args, settings)
    except ZaplineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _web(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.web import serve

    serve(settings, args.bind)
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.worker import SHUTDOWN_TIMEOUT_MS

    # exec: dramatiq's main process becomes ours, so Railway's SIGTERM reaches it directly.
    command = [
        sys.executable,
        "-m",
        "dramatiq",
        "pipeline.actors",
        "--processes",
        str(settings.worker_processes),
        "--threads",
        str(settings.worker_threads),
        "--worker-shutdown-timeout",
        str(SHUTDOWN_TIMEOUT_MS),
    ]
    os.execv(sys.executable, command)
    return 1  # not reached


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from migrations.runner import migrate

    applied = migrate(settings.database_url)
    print(f"migrations: {len(applied)} applied, database at head")
    return 0


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.dev import run

    return run(settings)
