"""A small PostgreSQL connection pool for one process, with driver errors translated."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from events.errors import StoreUnavailable, first_line

# libpq notices a dead server after keepalives_idle + interval * count seconds.
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


class Pool:
    """Up to `size` connections, created on demand and reused; broken ones are dropped."""

    def __init__(
        self,
        dsn: str,
        size: int = 4,
        *,
        connect_timeout: float = 3.0,
        statement_timeout_ms: int | None = None,
        wait_timeout: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._size = size
        self._connect_timeout = connect_timeout
        # A 200 promises a durable commit: never leave that to a database's or role's default.
        self._options = "-c synchronous_commit=on" + (
            f" -c statement_timeout={statement_timeout_ms}" if statement_timeout_ms else ""
        )
        self._wait_timeout = wait_timeout
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._opened = 0
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """Lend a connection; a driver error closes it and raises StoreUnavailable.

        Raises:
            StoreUnavailable: no connection could be had, or it broke while lent.
        """
        conn = self._take()
        try:
            yield conn
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
            self._discard(conn)
            conn = None
            raise StoreUnavailable(first_line(_cause(error))) from error
        except psycopg2.errors.UndefinedTable as error:
            # Up, but not migrated (yet): as unavailable as down, for web and CLI alike.
            raise StoreUnavailable(
                f"the database is not migrated (run python -m pipeline migrate):"
                f" {first_line(error)}"
            ) from error
        except Exception:
            raise  # the connection is fine; given back (and rolled back) below
        except BaseException:
            # An interruption (a timeout, a killed greenlet) leaves the protocol mid-way.
            self._discard(conn)
            conn = None
            raise
        finally:
            if conn is not None:
                self._give_back(conn)

    def close(self) -> None:
        """Close every idle connection."""
        while True:
            try:
                self._discard(self._idle.get_nowait())
            except queue.Empty:
                return

    def _take(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            may_open = self._opened < self._size
            if may_open:
                self._opened += 1
        if may_open:
            try:
                return self._connect()
            except BaseException:
                with self._lock:
                    self._opened -= 1
                raise
        try:
            return self._idle.get(timeout=self._wait_timeout)
        except queue.Empty:
            raise StoreUnavailable("no database connection free in time") from None

    def _connect(self) -> Any:
        try:
            with _deadline(self._connect_timeout):
                return psycopg2.connect(
                    self._dsn,
                    connect_timeout=max(1, int(self._connect_timeout)),
                    options=self._options,
                    application_name="zapline",
                    **_KEEPALIVES,
                )
        except (psycopg2.OperationalError, _Timeout) as error:
            raise StoreUnavailable(
                f"cannot connect to the database: {first_line(error)}"
            ) from error

    def _give_back(self, conn: Any) -> None:
        if conn.closed:
            self._forget()
            return
        if conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            try:
                conn.rollback()
            except psycopg2.Error:
                self._discard(conn)
                return
        self._idle.put(conn)

    def _discard(self, conn: Any) -> None:
        with suppress(psycopg2.Error):
            conn.close()
        self._forget()

    def _forget(self) -> None:
        with self._lock:
            self._opened -= 1


class _Timeout(Exception):
    pass


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Bound a connect under gevent, where libpq's own connect_timeout does not apply.

    psycogreen makes connections asynchronous, and libpq leaves timeouts of asynchronous
    connects to the caller.
    """
    try:
        import gevent
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        yield
        return
    if not monkey.is_module_patched("socket"):
        yield
        return
    timeout = gevent.Timeout(seconds, _Timeout(f"no answer within {seconds:g} s"))
    with timeout:
        yield


def _cause(error: BaseException) -> BaseException:
    """The error to report: psycopg2's `with conn` (or any rollback) on a connection the server
    closed raises "connection already closed" over the error that says what happened, once
    per block it leaves."""
    while isinstance(error, psycopg2.InterfaceError) and isinstance(
        error.__context__, psycopg2.Error
    ):
        error = error.__context__
    return error
