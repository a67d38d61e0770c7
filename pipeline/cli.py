"""python -m pipeline: web, worker, migrate, status, replay, rebuild, dev.

Every command exits 0 on success, 1 on failure (one line on stderr), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import psycopg2

from events.errors import StoreUnavailable, ZaplineError, first_line
from pipeline import logs
from pipeline.config import Settings
from projections import PROJECTION_NAMES


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; failures end with a one-line reason on stderr."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    web = commands.add_parser("web", help="run the web service (gunicorn, 0.0.0.0:$PORT)")
    web.add_argument("--bind", help="override the listen address, e.g. 127.0.0.1:8001")
    commands.add_parser("worker", help="run the worker service (Dramatiq, all actors)")
    commands.add_parser("migrate", help="apply pending database migrations")
    status = commands.add_parser("status", help="projections, lag, parked events, workers, queues")
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    replay = commands.add_parser("replay", help="re-apply stored events to a projection")
    replay.add_argument(
        "--projection",
        choices=sorted(PROJECTION_NAMES),
        help="required unless --media-failed; chats and media name the messages projection",
    )
    replay.add_argument("--from", dest="first", type=_position, default=1, metavar="POS")
    replay.add_argument("--to", dest="last", type=_position, metavar="POS")
    replay.add_argument("--instance", metavar="NAME")
    replay.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        metavar="EVENT",
        help="only events of this type, e.g. messages.update (repeatable)",
    )
    replay.add_argument("--chat", metavar="JID", help="only events that name this chat")
    replay.add_argument("--since", type=_time, metavar="ISO", help="received at or after")
    replay.add_argument("--until", type=_time, metavar="ISO", help="received before")
    replay.add_argument("--parked", action="store_true", help="only the parked events")
    replay.add_argument("--dry-run", action="store_true", help="report, change nothing")
    replay.add_argument(
        "--media-failed", action="store_true", help="retry every failed media from its start"
    )
    rebuild = commands.add_parser(
        "rebuild", help="rebuild a projection from the first event without read downtime"
    )
    rebuild.add_argument(
        "name",
        choices=sorted(PROJECTION_NAMES),
        metavar="NAME",
        help="messages (chats and media name it too: it builds them)",
    )
    rebuild.add_argument(
        "--dry-run", action="store_true", help="build and print the differences; do not swap"
    )
    rebuild.add_argument(
        "--discard", action="store_true", help="drop a shadow left by a dry or interrupted run"
    )
    rebuild.add_argument(
        "--batch",
        type=_position,
        metavar="N",
        help="events per shadow transaction (default 20,000)",
    )
    commands.add_parser("dev", help="run everything locally in the foreground (make run)")
    args = parser.parse_args(argv)
    for field in ("projection", "name"):
        given = getattr(args, field, None)
        if given is not None and PROJECTION_NAMES[given] != given:
            print(f"{given} are built by the {PROJECTION_NAMES[given]} projection", flush=True)
            setattr(args, field, PROJECTION_NAMES[given])
    handlers: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "web": _web,
        "worker": _worker,
        "migrate": _migrate,
        "status": _status,
        "replay": _replay,
        "rebuild": _rebuild,
        "dev": _dev,
    }
    if args.command in ("migrate", "status", "replay", "rebuild"):
        logs.configure_terminal()
    try:
        settings = Settings.from_env()
        return handlers[args.command](args, settings)
    except ZaplineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except psycopg2.Error as error:  # what the store did not translate: still one line
        print(f"error: database: {first_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `status | head -1`: the reader left. No traceback, and none at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


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


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.status import gather, render

    report = gather(settings)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    if args.media_failed:
        return _replay_media_failed(args, settings)
    if args.projection is None:
        print("usage: replay needs --projection NAME (or --media-failed)", file=sys.stderr)
        return 2
    from events.pool import Pool
    from events.store import EventStore
    from pipeline.progress import Progress
    from projections.replay import Selection, count, replay

    pool = Pool(settings.database_url, size=1)
    # Up to the log's head as it is now: new events are the live projector's to apply, and a
    # replay chasing them would never end under traffic, nor match the count it announced.
    last = args.last if args.last is not None else EventStore(pool).head()
    selection = Selection(
        args.first,
        last,
        args.instance,
        args.parked,
        types=tuple(args.types),
        chat=args.chat,
        since=args.since,
        until=args.until,
    )
    with pool.connection() as conn:
        progress = Progress("replay", count(conn, selection))
        progress.update(0)  # the rate counts from here
        result = replay(conn, selection, dry_run=args.dry_run, progress=progress.update)
    progress.done()
    changes = ", ".join(f"{n} {kind}" for kind, n in sorted(result.changes.items())) or "none"
    verb = "would change" if args.dry_run else "changed"
    print(
        f"replayed {result.events} events; {verb}: {changes};"
        f" parked {len(result.parked)}, unparked {result.unparked}"
    )
    return 0


def _rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline import rebuilds
    from pipeline.progress import Progress
    from projections import catchup, rebuild

    catchup.freeze_start_up_objects()
    try:
        with rebuilds.connection(settings) as conn:
            if args.discard:
                found = rebuild.discard(conn, args.name)
                print(f"rebuild of {args.name}: " + ("shadow discarded" if found else "no shadow"))
                return 0
            progress = Progress("rebuild", 0)
            outcome = rebuild.run(
                conn,
                args.name,
                dry_run=args.dry_run,
                batch=rebuild.BATCH if args.batch is None else max(args.batch, 1),
                progress=progress.update,
                on_summary=lambda summary: print(
                    f"differences (shadow vs live): {summary.render()}", flush=True
                ),
            )
            progress.done()
    except StoreUnavailable as error:
        raise StoreUnavailable(
            f"{error}; a rebuild resumes from its shadow when run again"
        ) from error
    rebuilds.publish(settings, outcome)
    if outcome.state == "built":
        print(f"dry run: {outcome.events} events built into the shadow; nothing swapped")
    else:
        print(
            f"rebuilt {args.name} from {outcome.events} events and swapped it in"
            f" (the live projection waited {outcome.locked_seconds:.1f} s);"
            f" {outcome.feed_changes} feed changes"
        )
    return 0


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    # A time without an offset is read as UTC, the zone events are received in.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _replay_media_failed(args: argparse.Namespace, settings: Settings) -> int:
    from events.pool import Pool
    from pipeline.actors import send_store_media
    from pipeline.worker import sweep_idle_seconds
    from projections import media

    pool = Pool(settings.database_url, size=1)
    with pool.connection() as conn:
        ids = media.requeue(conn, "failed", dry_run=args.dry_run)
    pool.close()
    if args.dry_run:
        print(f"would retry {len(ids)} failed media")
        return 0
    # Back to pending first, then queued: a lost message is picked up by the worker's sweep.
    try:
        send_store_media(settings, ids)
    except Exception as error:
        print(
            f"error: {len(ids)} failed media are pending again, but the broker did not take them"
            f" ({type(error).__name__}); the worker's sweep queues them within"
            f" {sweep_idle_seconds(settings) / 60:.0f} minutes",
            file=sys.stderr,
        )
        return 1
    print(f"retrying {len(ids)} failed media (now pending, attempts reset)")
    return 0


def _position(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a log position")
    return int(text)


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.dev import run

    return run(settings)
