"""Admin routes and /metrics: only the admin token opens them; what they report is right."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator

import psycopg2
import pytest

from tests.conftest import WebServer, drop_database, new_database, sql, start_web, wait_for
from tests.netutil import free_port

pytestmark = pytest.mark.services

ADMIN = "admin-token-for-tests"
API = "api-token-not-admin"
ROUTES = [
    ("GET", "/admin/projections"),
    ("POST", "/admin/projections/messages/rebuild"),
    ("GET", "/metrics"),
]


@pytest.fixture(scope="module")
def admin_web(database_url: str) -> Iterator[WebServer]:
    # Two gunicorn workers: /metrics must add up what each of them counted.
    server = start_web(database_url, ADMIN_TOKEN=ADMIN, API_TOKENS=f"{API}:*", WEB_CONCURRENCY="2")
    yield server
    server.stop()


@pytest.mark.parametrize("method,path", ROUTES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {API}"},
        {"Authorization": f"Basic {ADMIN}"},
        {"Authorization": f"Bearer {ADMIN}x"},
        {"X-Webhook-Token": ADMIN},
    ],
    ids=["none", "wrong", "api-token", "basic", "longer", "other-header"],
)
def test_admin_routes_and_metrics_refuse_requests_without_the_admin_token(
    admin_web: WebServer, method: str, path: str, headers: dict[str, str]
) -> None:
    answer = admin_web.request(method, path, headers=headers)
    assert answer.status == 401
    assert ADMIN not in answer.body.decode()


@pytest.mark.parametrize("method,path", ROUTES)
def test_without_admin_token_configured_nobody_gets_in(
    database_url: str, method: str, path: str
) -> None:
    server = start_web(database_url)
    try:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
            assert server.request(method, path, headers=headers).status == 401
    finally:
        server.stop()


def _metrics(web: WebServer) -> str:
    answer = web.request("GET", "/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return answer.body.decode()


def _value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_webhooks_by_outcome_across_every_web_process(admin_web: WebServer) -> None:
    before = _metrics(admin_web)
    body = json.dumps(
        {"event": "metrics.test", "instance": "metrics", "data": {"n": uuid.uuid4().hex}}
    ).encode()
    # given: 30 new webhooks, 10 redeliveries and 5 unauthorised posts, over both processes
    for i in range(30):
        one = json.dumps(
            {
                "event": "metrics.test",
                "instance": "metrics",
                "data": {"i": i, "run": uuid.uuid4().hex},
            }
        ).encode()
        assert admin_web.post_webhook(one).status == 200
    for _ in range(10):
        assert admin_web.post_webhook(body).status == 200
    for _ in range(5):
        assert admin_web.post_webhook(body, headers={}).status == 401
    # then: /metrics adds up what every process counted
    after = _metrics(admin_web)

    def delta(sample: str) -> float:
        return _value(after, sample) - _value(before, sample)

    assert delta('zapline_webhooks_total{outcome="stored"}') == 31
    assert delta('zapline_webhooks_total{outcome="duplicate"}') == 9
    assert delta('zapline_webhooks_total{outcome="unauthorized"}') == 5
    assert delta("zapline_events_appended_total") == 31
    assert delta("zapline_append_seconds_count") == 40


def test_metrics_report_projection_lag_parked_media_sockets_and_workers(
    admin_web: WebServer,
) -> None:
    text = _metrics(admin_web)
    for family in (
        'zapline_projection_lag_events{projection="messages"}',
        'zapline_projection_lag_seconds{projection="messages"}',
        'zapline_projection_checkpoint{projection="messages"}',
        'zapline_parked_events{projection="messages"}',
        'zapline_held_messages{projection="messages"}',
        'zapline_rebuild_running{projection="messages"}',
        'zapline_media{state="pending"}',
        'zapline_media{state="failed"}',
        "zapline_events_head",
        "zapline_websocket_clients",
        "zapline_workers",
        'zapline_append_seconds_bucket{le="0.05"}',
    ):
        assert re.search(rf"^{re.escape(family)} ", text, re.M), family
    assert _value(text, "zapline_database_up") == 1
    assert _value(text, "zapline_redis_up") == 1


def test_a_scrape_without_redis_says_so_instead_of_dropping_the_worker_figures(
    database_url: str,
) -> None:
    server = start_web(
        database_url, ADMIN_TOKEN=ADMIN, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
    )
    try:
        text = _metrics(server)
    finally:
        server.stop()
    assert re.search(r"^zapline_redis_up 0\.0$", text, re.M)
    assert _value(text, "zapline_database_up") == 1


def test_a_database_that_holds_the_reads_up_gives_a_prompt_scrape_that_says_so(
    database_url: str,
) -> None:
    server = start_web(database_url, ADMIN_TOKEN=ADMIN)
    blocker = psycopg2.connect(database_url)
    try:
        with blocker.cursor() as cur:  # kept until rollback: every lag read waits on it
            cur.execute("LOCK TABLE parked IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        text = _metrics(server)
        took = time.monotonic() - started
    finally:
        blocker.rollback()
        blocker.close()
        server.stop()

    # Well inside Prometheus' 10 s scrape timeout, and an alert on the gauge can fire.
    assert took < 9, f"took {took:.1f} s"
    assert re.search(r"^zapline_database_up 0\.0$", text, re.M) and "zapline_workers" in text


def test_admin_projections_reports_checkpoint_head_lag_parked_and_rebuild(
    admin_web: WebServer,
) -> None:
    def report() -> dict[str, object]:
        answer = admin_web.request(
            "GET", "/admin/projections", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert answer.status == 200
        [projection] = answer.json()["projections"]
        return dict(projection)

    projection = wait_for(report)
    assert projection["projection"] == "messages"
    for field in ("checkpoint", "head", "lag_events", "lag_seconds", "parked", "rebuild"):
        assert field in projection
    # before any rebuild, its state is there to read all the same
    assert projection["rebuild"]["state"] == "none"
    assert projection["rebuild"]["events_done"] == 0


def test_a_rebuild_request_the_broker_refuses_is_503_and_may_be_retried_at_once() -> None:
    url = new_database()
    server = start_web(
        url, ADMIN_TOKEN=ADMIN, RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    )
    try:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        first = server.request("POST", "/admin/projections/messages/rebuild", headers=auth)
        again = server.request("POST", "/admin/projections/messages/rebuild", headers=auth)
        [(state, error)] = sql(url, "SELECT state, error FROM rebuilds")
    finally:
        server.stop()
        drop_database(url)

    # Not "already requested": nothing will run the first, and the row says why.
    assert (first.status, again.status) == (503, 503)
    assert state == "failed" and error.startswith("request not delivered to a worker")


def test_rebuilding_an_unknown_projection_is_404(admin_web: WebServer) -> None:
    answer = admin_web.request(
        "POST", "/admin/projections/nothing/rebuild", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert answer.status == 404
