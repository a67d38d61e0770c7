"""GET /api/instances/... reads through a real gunicorn and real PostgreSQL, rows put in by SQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import Response, WebServer, sql, start_web

pytestmark = pytest.mark.services

STAR_TOKEN = "reads-star-token"
ALPHA_TOKEN = "reads-alpha-token"
ALPHA = "alpha-" + uuid.uuid4().hex[:8]
BETA = "beta-" + uuid.uuid4().hex[:8]
JID = "5511999990001@s.whatsapp.net"


@pytest.fixture(scope="module")
def reads(database_url: str) -> Iterator[WebServer]:
    server = start_web(database_url, API_TOKENS=f"{STAR_TOKEN}:*,{ALPHA_TOKEN}:{ALPHA}")
    yield server
    server.stop()


def _get(web: WebServer, path: str, token: str | None = STAR_TOKEN) -> Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return web.request("GET", path, headers=headers)


def _instance(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _message(instance: str, chat_jid: str, key_id: str, timestamp: str | None) -> dict[str, Any]:
    return {
        "instance": instance,
        "chat_jid": chat_jid,
        "key_id": key_id,
        "from_me": False,
        "sender": chat_jid,
        "push_name": "Ana",
        "type": "text",
        "text": f"olá {key_id} 👋",
        "caption": None,
        "timestamp": timestamp,
        "status": "delivered",
        "edited": False,
        "deleted": False,
        "reactions": {"👍": ["5511888880000@s.whatsapp.net"]},
        "quoted_key_id": None,
        "media": None,
    }


def _chat(instance: str, chat_jid: str, last_message_at: str | None) -> dict[str, Any]:
    return {
        "instance": instance,
        "chat_jid": chat_jid,
        "name": f"chat {chat_jid}",
        "is_group": chat_jid.endswith("@g.us"),
        "last_message_at": last_message_at,
        "last_message_preview": "oi",
        "last_message_key_id": "K1",
        "unread_count": 2,
    }


def _insert_messages(url: str, messages: list[dict[str, Any]]) -> None:
    sql(
        url,
        """INSERT INTO messages (instance, key_id, chat_jid, sent_at, data, position)
        SELECT m->>'instance', m->>'key_id', m->>'chat_jid', (m->>'timestamp')::timestamptz, m, 1
        FROM jsonb_array_elements(%s::jsonb) AS m""",
        (json.dumps(messages),),
    )


def _insert_chats(url: str, chats: list[dict[str, Any]]) -> None:
    sql(
        url,
        """INSERT INTO chats (instance, chat_jid, last_message_at, data)
        SELECT c->>'instance', c->>'chat_jid', (c->>'last_message_at')::timestamptz, c
        FROM jsonb_array_elements(%s::jsonb) AS c""",
        (json.dumps(chats),),
    )


def _insert_feed(url: str, instance: str, first: int, last: int, head: int) -> None:
    """Feed rows `first..last` (older ones pruned) and the instance's head cursor."""
    sql(
        url,
        """INSERT INTO feed (instance, cursor, kind, key, data)
        SELECT %(i)s, c, 'message.created', 'K' || c, jsonb_build_object('n', c, 'text', 'olá')
        FROM generate_series(%(first)s, %(last)s) AS c;
        INSERT INTO feed_heads (instance, cursor) VALUES (%(i)s, %(head)s)""",
        {"i": instance, "first": first, "last": last, "head": head},
    )


def _pages(reads: WebServer, path: str, count: int) -> list[Any]:
    """`count` pages of a keyset-paged read, each asked for with the last one's next_before."""
    pages: list[Any] = []
    before = ""
    for _ in range(count):
        answer = _get(reads, f"{path}&before={before}")
        assert answer.status == 200, answer.body
        pages.append(answer.json())
        before = pages[-1]["next_before"] or ""
    return pages


def _feed_cursors(answer: Response) -> list[int]:
    assert answer.status == 200, answer.body
    return [item["cursor"] for item in answer.json()["items"]]


def test_chats_come_newest_activity_first_with_undated_chats_last_and_limit_cuts_the_page(
    reads: WebServer, database_url: str
) -> None:
    # given
    instance = _instance("chats")
    chats = [
        _chat(instance, "b@s.whatsapp.net", "2025-11-30T10:00:00Z"),
        _chat(instance, "a@s.whatsapp.net", None),
        _chat(instance, "c@g.us", "2025-11-30T12:00:00Z"),
        _chat(instance, "d@s.whatsapp.net", "2025-11-30T10:00:00Z"),
    ]
    _insert_chats(database_url, chats)
    _insert_chats(database_url, [_chat(_instance("other"), "e@s.whatsapp.net", None)])

    # when
    everything = _get(reads, f"/api/instances/{instance}/chats")
    two = _get(reads, f"/api/instances/{instance}/chats?limit=2")

    # then
    assert everything.status == 200 and everything.headers["content-type"].startswith(
        "application/json"
    )
    assert everything.json() == {
        "items": [chats[2], chats[0], chats[3], chats[1]],
        "next_before": None,
    }
    assert two.json() == {"items": [chats[2], chats[0]], "next_before": "b@s.whatsapp.net"}


def test_chat_pages_walk_every_chat_exactly_once_through_ties_and_undated_ones(
    reads: WebServer, database_url: str
) -> None:
    # given: 130 chats, groups of three sharing a minute (chat_jid breaks the tie), and
    # every eleventh with no message time at all
    instance = _instance("chat-pages")
    chats = [
        _chat(
            instance,
            f"{(n * 53) % 130:03d}@s.whatsapp.net",
            None if n % 11 == 4 else f"2025-11-30T{n // 3 // 60:02d}:{n // 3 % 60:02d}:00Z",
        )
        for n in range(130)
    ]
    _insert_chats(database_url, chats)
    dated = [c for c in chats if c["last_message_at"] is not None]
    expected = sorted(dated, key=lambda c: c["chat_jid"])
    expected.sort(key=lambda c: c["last_message_at"], reverse=True)  # stable: jid ascending
    expected += sorted(
        (c for c in chats if c["last_message_at"] is None), key=lambda c: c["chat_jid"]
    )

    # when
    pages = _pages(reads, f"/api/instances/{instance}/chats?limit=60", 3)

    # then
    assert [len(page["items"]) for page in pages] == [60, 60, 10]
    assert pages[-1]["next_before"] is None
    assert [item for page in pages for item in page["items"]] == expected
    unknown = _get(reads, f"/api/instances/{instance}/chats?before=nobody@s.whatsapp.net")
    assert unknown.status == 400


def test_chats_default_to_50_and_a_limit_above_500_is_capped_at_500(
    reads: WebServer, database_url: str
) -> None:
    instance = _instance("many")
    _insert_chats(database_url, [_chat(instance, f"{n}@s.whatsapp.net", None) for n in range(501)])

    assert len(_get(reads, f"/api/instances/{instance}/chats").json()["items"]) == 50
    assert len(_get(reads, f"/api/instances/{instance}/chats?limit=9999").json()["items"]) == 500


def test_keyset_pagination_walks_a_chats_120_messages_exactly_once_in_three_pages(
    reads: WebServer, database_url: str
) -> None:
    # given: pairs share a second (key_id breaks the tie), six have no timestamp at all
    instance = _instance("pages")
    messages = [
        _message(
            instance,
            JID,
            f"K{(n * 37) % 120:03d}",
            None if n % 20 == 7 else f"2025-11-30T10:{n // 2 // 60:02d}:{n // 2 % 60:02d}Z",
        )
        for n in range(120)
    ]
    _insert_messages(database_url, messages)
    _insert_messages(database_url, [_message(instance, "other@s.whatsapp.net", "X1", None)])
    dated = [m for m in messages if m["timestamp"] is not None]
    undated = [m for m in messages if m["timestamp"] is None]
    expected = sorted(dated, key=lambda m: (m["timestamp"], m["key_id"]), reverse=True)
    expected += sorted(undated, key=lambda m: m["key_id"], reverse=True)

    # when
    pages = _pages(reads, f"/api/instances/{instance}/chats/{JID}/messages?limit=50", 3)

    # then
    assert [len(page["items"]) for page in pages] == [50, 50, 20]
    assert [page["next_before"] for page in pages] == [
        expected[49]["key_id"],
        expected[99]["key_id"],
        None,
    ]
    assert [item for page in pages for item in page["items"]] == expected


def test_a_chat_jid_is_found_plain_and_url_encoded(reads: WebServer, database_url: str) -> None:
    instance = _instance("jid")
    message = _message(instance, JID, "ONLY", "2025-11-30T10:00:00Z")
    _insert_messages(database_url, [message])

    plain = _get(reads, f"/api/instances/{instance}/chats/{JID}/messages")
    encoded = _get(reads, f"/api/instances/{instance}/chats/{quote(JID, safe='')}/messages")

    assert "%40" in quote(JID, safe="")
    assert plain.json() == encoded.json() == {"items": [message], "next_before": None}


def test_messages_limit_cuts_the_page_and_says_where_the_next_one_starts(
    reads: WebServer, database_url: str
) -> None:
    instance = _instance("limit")
    messages = [_message(instance, JID, f"K{n}", f"2025-11-30T10:00:0{n}Z") for n in range(3)]
    _insert_messages(database_url, messages)

    first = _get(reads, f"/api/instances/{instance}/chats/{JID}/messages?limit=2").json()
    rest = _get(reads, f"/api/instances/{instance}/chats/{JID}/messages?limit=2&before=K1").json()

    assert first == {"items": [messages[2], messages[1]], "next_before": "K1"}
    assert rest == {"items": [messages[0]], "next_before": None}


def test_messages_without_a_timestamp_come_last_and_page_by_key_id(
    reads: WebServer, database_url: str
) -> None:
    instance = _instance("undated")
    dated = _message(instance, JID, "A", "2025-11-30T10:00:00Z")
    undated = [_message(instance, JID, key, None) for key in ("U1", "U2", "U3")]
    _insert_messages(database_url, [*undated, dated])
    path = f"/api/instances/{instance}/chats/{JID}/messages?limit=2"

    first = _get(reads, path).json()
    second = _get(reads, path + "&before=U2").json()

    assert first == {"items": [dated, undated[2]], "next_before": "U3"}
    assert second == {"items": [undated[0]], "next_before": None}


def test_feed_after_returns_exactly_the_later_changes_in_cursor_order(
    reads: WebServer, database_url: str
) -> None:
    # given
    instance = _instance("feed")
    _insert_feed(database_url, instance, 1, 10, head=10)
    _insert_feed(database_url, _instance("other"), 1, 20, head=20)

    # when
    later = _get(reads, f"/api/instances/{instance}/feed?after=4")
    page = _get(reads, f"/api/instances/{instance}/feed?after=4&limit=3")
    caught_up = _get(reads, f"/api/instances/{instance}/feed?after=10")
    everything = _get(reads, f"/api/instances/{instance}/feed")

    # then
    assert _feed_cursors(later) == [5, 6, 7, 8, 9, 10] and later.json()["cursor"] == 10
    assert later.json()["items"][0] == {
        "cursor": 5,
        "type": "message.created",
        "instance": instance,
        "data": {"n": 5, "text": "olá"},
    }
    assert page.json()["cursor"] == 7 and _feed_cursors(page) == [5, 6, 7]
    assert caught_up.json() == {"items": [], "cursor": 10}
    assert _feed_cursors(everything) == list(range(1, 11))


def test_feed_answers_reset_when_after_is_older_than_what_is_retained(
    reads: WebServer, database_url: str
) -> None:
    # given: cursors 1..5 pruned, 6..10 retained; and an instance whose feed is all pruned
    instance, idle = _instance("pruned"), _instance("idle")
    _insert_feed(database_url, instance, 6, 10, head=10)
    sql(database_url, "INSERT INTO feed_heads (instance, cursor) VALUES (%s, 10)", (idle,))

    def feed(name: str, after: int) -> Any:
        return _get(reads, f"/api/instances/{name}/feed?after={after}").json()

    # then
    assert [item["cursor"] for item in feed(instance, 5)["items"]] == [6, 7, 8, 9, 10]
    # A reset names the head, where a client goes on from once it has reloaded.
    assert feed(instance, 4) == {"items": [], "cursor": 10, "reset": True}
    assert feed(instance, 0) == {"items": [], "cursor": 10, "reset": True}
    assert feed(idle, 9) == {"items": [], "cursor": 10, "reset": True}
    assert feed(idle, 10) == {"items": [], "cursor": 10}
    # A cursor ahead of the feed (another instance's, a restored database) resets too.
    assert feed(instance, 11) == {"items": [], "cursor": 10, "reset": True}


ROUTES = [
    "/api/instances/{}/chats",
    f"/api/instances/{{}}/chats/{JID}/messages",
    "/api/instances/{}/feed",
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "headers, query",
    [
        ({}, ""),
        ({"Authorization": "Bearer wrong-token"}, ""),
        ({"Authorization": f"Basic {STAR_TOKEN}"}, ""),
        ({"Authorization": f"Bearer {STAR_TOKEN}x"}, ""),
        ({}, "?token=wrong-token"),
    ],
    ids=["none", "wrong-bearer", "not-bearer", "longer-bearer", "wrong-query"],
)
def test_reads_without_a_valid_token_get_401_and_no_data(
    reads: WebServer, database_url: str, route: str, headers: dict[str, str], query: str
) -> None:
    instance = _instance("secret")
    _insert_chats(database_url, [_chat(instance, JID, "2025-11-30T10:00:00Z")])
    _insert_messages(database_url, [_message(instance, JID, "SECRET", "2025-11-30T10:00:00Z")])
    _insert_feed(database_url, instance, 1, 1, head=1)

    answer = reads.request("GET", route.format(instance) + query, headers=headers)

    assert answer.status == 401
    assert answer.json() == {"error": "missing or invalid API token"}


@pytest.mark.parametrize("route", ROUTES)
def test_the_token_may_come_in_the_query_string_instead_of_the_header(
    reads: WebServer, route: str
) -> None:
    answer = _get(reads, route.format(_instance("q")) + f"?token={STAR_TOKEN}", token=None)
    assert answer.status == 200, answer.body


@pytest.mark.parametrize("route", ROUTES)
def test_a_token_for_one_instance_gets_404_for_another_on_every_route_and_a_star_token_sees_both(
    reads: WebServer, database_url: str, route: str
) -> None:
    # given: both instances have data
    for instance in (ALPHA, BETA):
        key = f"{route}-{instance}"
        _insert_chats(database_url, [_chat(instance, key, "2025-11-30T10:00:00Z")])
        _insert_messages(database_url, [_message(instance, JID, key, "2025-11-30T10:00:00Z")])
        sql(
            database_url,
            """INSERT INTO feed (instance, cursor, kind, key, data)
            SELECT %s, coalesce(max(cursor), 0) + 1, 'chat.updated', %s, '{}' FROM feed
            WHERE instance = %s""",
            (instance, key, instance),
        )

    # when
    own = _get(reads, route.format(ALPHA), ALPHA_TOKEN)
    other = _get(reads, route.format(BETA), ALPHA_TOKEN)
    absent = _get(reads, route.format(_instance("nowhere")), ALPHA_TOKEN)
    star = [_get(reads, route.format(name), STAR_TOKEN) for name in (ALPHA, BETA)]

    # then: another tenant's instance looks exactly like one that does not exist
    assert own.status == 200 and own.json()["items"]
    assert other.status == absent.status == 404
    assert other.body == absent.body and BETA.encode() not in other.body
    assert [a.status for a in star] == [200, 200] and all(a.json()["items"] for a in star)


@pytest.mark.parametrize(
    "path, message",
    [
        ("/chats?limit=0", "limit must be a whole number of at least 1"),
        ("/chats?limit=ten", "limit must be a whole number of at least 1"),
        ("/chats?limit=-5", "limit must be a whole number of at least 1"),
        ("/chats?limit=1.5", "limit must be a whole number of at least 1"),
        (f"/chats/{JID}/messages?limit=0", "limit must be a whole number of at least 1"),
        (f"/chats/{JID}/messages?limit=x", "limit must be a whole number of at least 1"),
        (f"/chats/{JID}/messages?before=NOPE", "before must be the key_id of a message"),
        (f"/chats/{JID}/messages?before=OTHER", "before must be the key_id of a message"),
        ("/feed?limit=0", "limit must be a whole number of at least 1"),
        ("/feed?after=-1", "after must be a whole number of at least 0"),
        ("/feed?after=abc", "after must be a whole number of at least 0"),
        ("/feed?after=99999999999999999999", "after must be a whole number of at least 0"),
    ],
)
def test_bad_limit_after_or_before_gets_400_with_a_clear_message(
    reads: WebServer, database_url: str, path: str, message: str
) -> None:
    instance = _instance("bad")
    _insert_messages(database_url, [_message(instance, "x@s.whatsapp.net", "OTHER", None)])

    answer = _get(reads, f"/api/instances/{instance}{path}")

    assert answer.status == 400
    assert answer.json()["error"].startswith(message)


def test_cors_origins_may_call_the_api_from_a_browser_and_others_may_not(database_url: str) -> None:
    allowed = "https://crm.example.com"
    server = start_web(database_url, API_TOKENS=f"{STAR_TOKEN}:*", CORS_ORIGINS=allowed)
    auth = {"Authorization": f"Bearer {STAR_TOKEN}"}
    try:
        path = f"/api/instances/{_instance('cors')}/chats"
        preflight = server.request(
            "OPTIONS",
            path,
            headers={
                "Origin": allowed,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        read = server.request("GET", path, headers={"Origin": allowed, **auth})
        refused = server.request("GET", path, headers={"Origin": allowed})
        stranger = server.request("GET", path, headers={"Origin": "https://evil.example", **auth})
    finally:
        server.stop()

    assert preflight.status == 200
    assert preflight.headers["access-control-allow-origin"] == allowed
    assert "GET" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "authorization"
    assert read.status == 200 and read.headers["access-control-allow-origin"] == allowed
    # An error is readable too, so the page can tell a bad token from a network failure.
    assert refused.status == 401 and refused.headers["access-control-allow-origin"] == allowed
    assert stranger.status == 200 and "access-control-allow-origin" not in stranger.headers


def test_errors_falcon_answers_itself_have_the_same_shape_as_ours(reads: WebServer) -> None:
    no_route = _get(reads, "/api/nothing/here")
    no_method = reads.request("DELETE", f"/api/instances/{_instance('x')}/chats")
    ours = _get(reads, f"/api/instances/{_instance('x')}/chats?limit=zero")

    assert (no_route.status, no_method.status, ours.status) == (404, 405, 400)
    assert [set(answer.json()) for answer in (no_route, no_method, ours)] == [{"error"}] * 3


def test_reads_from_a_database_not_migrated_yet_are_503_to_retry_not_500(
    fresh_database_url: str,
) -> None:
    # given: tables the reads need are missing (a deploy whose migrations have not run)
    url = fresh_database_url
    sql(url, "ALTER TABLE chats RENAME TO chats_not_yet; ALTER TABLE messages RENAME TO m_not_yet")
    server = start_web(url, API_TOKENS=f"{STAR_TOKEN}:*")
    try:
        answers = [
            _get(server, f"/api/instances/{ALPHA}/chats"),
            _get(server, f"/api/instances/{ALPHA}/chats/{JID}/messages"),
        ]
    finally:
        server.stop()
    for answer in answers:
        assert answer.status == 503 and int(answer.headers["retry-after"]) > 0
        assert answer.json() == {"error": "database unavailable, retry later"}


def test_an_unexpected_error_is_a_500_in_our_shape_and_its_log_holds_no_token(
    fresh_database_url: str,
) -> None:
    # given: a fault nobody planned for (a column the code reads is missing)
    url = fresh_database_url
    sql(url, "ALTER TABLE chats RENAME COLUMN data TO data_renamed")
    token = "reads-" + uuid.uuid4().hex
    server = start_web(url, capture_output=True, API_TOKENS=f"{token}:*")
    try:
        answer = server.request("GET", f"/api/instances/{ALPHA}/chats?token={token}")
    finally:
        server.stop()
    assert answer.status == 500 and answer.json() == {"error": "internal error"}
    assert server.process.stdout is not None
    output = server.process.stdout.read().decode()
    assert token not in output
    [logged] = [json.loads(line) for line in output.splitlines() if '"unexpected error"' in line]
    assert logged["path"] == f"/api/instances/{ALPHA}/chats" and "data" in logged["error"]
