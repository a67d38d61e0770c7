"""Applies the numbered, forward-only SQL files in this folder, once each, in order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
from psycopg2.extensions import parse_dsn

from events.errors import StoreUnavailable, first_line

FOLDER = Path(__file__).resolve().parent
# Any constant will do; it only has to be the same in every process that migrates.
LOCK_ID = 0x7A61706C696E65  # "zapline"


@dataclass(frozen=True)
class Migration:
    """One SQL file: its number, name and text."""

    version: int
    name: str
    path: Path


def available() -> list[Migration]:
    """Return the migration files, ordered by number."""
    found = []
    for path in FOLDER.glob("*.sql"):
        match = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", path.name)
        if match:
            found.append(Migration(int(match[1]), match[2], path))
    return sorted(found, key=lambda m: m.version)


def head() -> int:
    """Return the highest migration number shipped with this code."""
    return max(m.version for m in available())


def applied_version(conn: Any) -> int:
    """Return the highest applied migration number, 0 on an empty database."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not cur.fetchone()[0]:
            return 0
        cur.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
        return int(cur.fetchone()[0])


def migrate(dsn: str, *, log: Any = print) -> list[Migration]:
    """Create the database if needed and apply pending migrations; return those applied.

    Concurrent runs are safe: they queue on an advisory lock and the later ones find
    nothing left to do.

    Raises:
        StoreUnavailable: the database server cannot be reached.
    """
    _create_database_if_missing(dsn, log)
    try:
        conn = psycopg2.connect(dsn, connect_timeout=10)
    except psycopg2.OperationalError as error:
        raise StoreUnavailable(f"cannot connect to the database: {first_line(error)}") from error
    done = []
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version int PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        current = applied_version(conn)
        for migration in available():
            if migration.version <= current:
                continue
            conn.autocommit = False
            with conn, conn.cursor() as cur:
                cur.execute(migration.path.read_text())
                cur.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            log(f"applied migration {migration.version:04d}_{migration.name}")
            done.append(migration)
    finally:
        conn.close()  # closing the session releases the advisory lock
    return done


def _create_database_if_missing(dsn: str, log: Any) -> None:
    params = parse_dsn(dsn)
    try:
        psycopg2.connect(dsn, connect_timeout=10).close()
        return
    except psycopg2.OperationalError as error:
        if "does not exist" not in str(error):
            raise StoreUnavailable(
                f"cannot connect to the database: {first_line(error)}"
            ) from error
    name = params.get("dbname", "")
    admin = psycopg2.connect(**{**params, "dbname": "postgres", "connect_timeout": 10})
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"')
        log(f"created database {name}")
    except (psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation):
        pass  # another migrate run created it first
    finally:
        admin.close()
