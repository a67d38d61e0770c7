"""Running a rebuild from the CLI or the worker, and asking for one from the web process.

The web process never rebuilds: `POST /admin/projections/{name}/rebuild` marks the rebuild
requested and sends `rebuild_projection` to the worker. A worker runs it for at most
WORKER_RUN_SECONDS (RabbitMQ closes a channel holding a message unacked past its
consumer_timeout, 30 min by default) and, if not done, sends itself again: the shadow
checkpoint makes every run resume where the last stopped, deploys included.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from events.pool import Pool
from pipeline import fanout, probes
from pipeline.config import Settings
from projections import rebuild

log = logging.getLogger("zapline.rebuild")

WORKER_RUN_SECONDS = 20 * 60


@contextlib.contextmanager
def connection(settings: Settings) -> Iterator[Any]:
    """One database connection for a rebuild, driver errors translated."""
    pool = Pool(settings.database_url, size=1)
    try:
        with pool.connection() as conn:
            yield conn
    finally:
        pool.close()


def publish(settings: Settings, outcome: rebuild.Outcome) -> None:
    """Push the swap's feed changes to live sockets (best effort: they also read the feed)."""
    if not outcome.feed:
        return
    try:
        fanout.Publisher(probes.redis_client(settings.redis_url), settings.database_url)(
            outcome.feed
        )
    except Exception as error:  # sockets notice the feed head moved and fill from the table
        log.warning("rebuild fan-out failed", extra={"fields": {"error": type(error).__name__}})


def _wanted(conn: Any, name: str) -> bool:
    """Whether this database asked for the rebuild (or has one to resume or retry).

    A message outliving its purpose (redelivered after the swap, or sent for another
    database sharing the broker) must not start a rebuild nobody asked for.
    """
    with conn, conn.cursor() as cur:
        cur.execute("SELECT state FROM rebuilds WHERE projection = %s", (name,))
        row = cur.fetchone()
    return row is not None and row[0] in ("requested", "building", "failed")


def run_in_worker(settings: Settings, name: str, stopping: Callable[[], bool]) -> str:
    """Run or resume a rebuild for a bounded time; return its state (paused: call again)."""
    deadline = time.monotonic() + WORKER_RUN_SECONDS
    last_log = [0.0]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last_log[0] >= 5:
            last_log[0] = time.monotonic()
            fields = {"projection": name, "done": done, "of": total}
            log.info("rebuilding", extra={"fields": fields})

    def summary(found: rebuild.Summary) -> None:
        log.info("rebuild differences", extra={"fields": {"projection": name, **found.tables}})

    try:
        with connection(settings) as conn:
            if not _wanted(conn, name):
                log.info("no rebuild requested; message ignored", extra={"fields": {"name": name}})
                return "ignored"
            outcome = rebuild.run(
                conn,
                name,
                progress=progress,
                on_summary=summary,
                should_stop=lambda: stopping() or time.monotonic() > deadline,
            )
    except rebuild.AlreadyRunning:
        log.info("rebuild already running elsewhere", extra={"fields": {"projection": name}})
        return "running"
    publish(settings, outcome)
    fields = {"projection": name, "locked_seconds": round(outcome.locked_seconds, 2)}
    log.info("rebuild " + outcome.state, extra={"fields": fields})
    return outcome.state
