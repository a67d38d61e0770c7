"""The commands' exits as the contract states them: 1 with a one-line reason on stderr when
they fail, 2 on bad usage."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, drop_database, new_database, sql
from tests.netutil import free_port

pytestmark = pytest.mark.services


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        text=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["migrate"],
        ["status"],
        ["status", "--json"],
        ["replay", "--projection", "messages"],
        ["replay", "--media-failed"],
        ["rebuild", "messages"],
    ],
)
def test_a_command_that_cannot_reach_the_database_exits_1_with_one_line(args: list[str]) -> None:
    result = _run(*args, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/zapline")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "database" in line


@pytest.mark.parametrize(
    "args", [["status"], ["replay", "--projection", "messages"], ["rebuild", "messages"]]
)
def test_a_command_on_a_database_not_migrated_yet_exits_1_with_one_line(
    args: list[str], fresh_database_url: str
) -> None:
    sql(fresh_database_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    result = _run(*args, DATABASE_URL=fresh_database_url)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "not migrated (run python -m pipeline migrate)" in line


@pytest.mark.parametrize("name", ["chats", "media"])
def test_chats_and_media_name_the_messages_projection(database_url: str, name: str) -> None:
    replayed = _run("replay", "--projection", name, "--dry-run", DATABASE_URL=database_url)
    discarded = _run("rebuild", name, "--discard", DATABASE_URL=database_url)
    for result in (replayed, discarded):
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{name} are built by the messages projection\n")
    assert "rebuild of messages: no shadow" in discarded.stdout


def test_media_retried_while_the_broker_is_down_exit_1_with_one_line_and_stay_pending() -> None:
    url = new_database()
    try:
        sql(
            url,
            "INSERT INTO media (instance, key_id, status, reason) VALUES ('a', 'K', 'failed', 'x')",
        )
        broker = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
        result = _run("replay", "--media-failed", DATABASE_URL=url, RABBITMQ_URL=broker)
        [(status,)] = sql(url, "SELECT status FROM media")
    finally:
        drop_database(url)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "1 failed media are pending again" in line and "sweep" in line
    assert status == "pending"


def test_status_tells_a_refused_rabbitmq_login_from_one_that_does_not_answer(
    database_url: str,
) -> None:
    base = "amqp://guest:guest@127.0.0.1"
    refused = _run("status", DATABASE_URL=database_url, RABBITMQ_URL=f"{base}:5672/no_such_vhost")
    silent = _run("status", DATABASE_URL=database_url, RABBITMQ_URL=f"{base}:{free_port()}/%2F")

    assert refused.returncode == silent.returncode == 0
    assert "queue projections: unknown (RabbitMQ refused the login" in refused.stdout
    assert "queue projections: unknown (RabbitMQ did not answer)" in silent.stdout


def test_web_on_a_taken_port_exits_1_with_one_line_at_once() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run("web", "--bind", f"127.0.0.1:{port}")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert f"127.0.0.1:{port}" in line and "in use" in line


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["status", "--bogus"],
        ["replay"],
        ["replay", "--projection", "messages", "--from", "x"],
        ["rebuild", "nosuch"],
    ],
)
def test_bad_usage_exits_2_and_says_so(args: list[str]) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert "usage" in result.stderr
