"""The projection runner: read events after the checkpoint, apply them, write rows + feed +
checkpoint in one transaction (design.md invariants 4, 5 and 9).

Only one runner per projection writes at a time: each batch transaction takes the
projection's advisory lock first, so two workers never apply the same events concurrently,
and a crash or SIGKILL anywhere rolls the whole batch back.
"""

from __future__ import annotations

import io
import logging
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from events.event import Event
from events.jsontext import dumps
from events.store import Cursor, read_after
from projections import chats, messages
from projections.chats import ChatState
from projections.messages import MessageState

log = logging.getLogger("zapline.runner")

PROJECTION = "messages"
# Events per transaction. Larger batches write each touched chat once for more events
# (catch-up ran ~1.6x faster at 5,000 than at 1,000); live traffic makes small batches anyway.
BATCH_SIZE = 5000
# Feed retention (contract "feed"): at least 7 days or 100,000 changes per instance.
FEED_KEEP_DAYS = 7
FEED_KEEP_CHANGES = 100_000


class FeedItem(NamedTuple):
    """One change as clients receive it; `data_json` is `data` as stored in the feed."""

    instance: str
    cursor: int
    kind: str
    data: dict[str, Any]
    data_json: str


@dataclass
class Batch:
    """What one committed batch did."""

    events: int = 0
    cursor: Cursor = field(default_factory=Cursor)
    feed: list[FeedItem] = field(default_factory=list)
    parked: list[int] = field(default_factory=list)
    new_media: list[int] = field(default_factory=list)
    # The public messages written, by key (media id merged in).
    written: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


class Busy(Exception):
    """Another runner holds the projection's lock."""


@dataclass(frozen=True)
class Tables:
    """Where a projection's rows go: the live tables, or a rebuild's shadow copies.

    Names are constants of this package, never input, so they are put into SQL as text.
    `feed` says whether changes reach the change feed (a shadow's never do); `parked_as`
    is the projection name its unappliable events are parked under.
    """

    messages: str = "messages"
    holds: str = "message_holds"
    chats: str = "chats"
    parked_as: str = PROJECTION
    feed: bool = True


LIVE = Tables()


def lock_id(projection: str) -> int:
    """The advisory lock key of a projection."""
    return zlib.crc32(f"zapline.projection.{projection}".encode())


def lock_listed(cur: Any, key: int, *, granted: bool) -> bool:
    """Whether a session of this database holds (`granted`) or waits for the advisory lock
    `key`, a `lock_id`."""
    cur.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND classid = 0 AND objid = %s::bigint::oid AND objsubid = 1 AND granted = %s)",
        (key, granted),
    )
    return bool(cur.fetchone()[0])


# What the database refuses to store however often it is asked (a value out of range, a
# constraint, a row too big for an index): a batch failing so would fail for ever.
REFUSED = (psycopg2.DataError, psycopg2.IntegrityError, psycopg2.errors.ProgramLimitExceeded)


def run_batch(
    conn: Any, *, limit: int = BATCH_SIZE, wait: bool = True, park_refused: bool = False
) -> Batch:
    """Project the next batch of events and commit; return what it did.

    With `wait=False` it raises Busy instead of queueing behind another runner. With
    `park_refused`, the events are applied as by `apply_or_park`.
    """
    with conn, conn.cursor() as cur:
        _lock(cur, wait)
        txid, position = cur.fetchone()
        read = read_after(cur, Cursor(txid, position), limit)
        if not read:
            return Batch(cursor=Cursor(txid, position))
        events = [event for _, event in read]
        batch = apply_or_park(cur, events) if park_refused else apply_events(cur, events)
        batch.events = len(read)
        batch.cursor = read[-1][0]
        cur.execute(
            "UPDATE checkpoints SET txid = %s, position = %s, updated_at = now()"
            " WHERE projection = %s",
            (batch.cursor.txid, batch.cursor.position, PROJECTION),
        )
        return batch


def apply_or_park(cur: Any, events: list[Event], *, tables: Tables = LIVE) -> Batch:
    """`apply_events`, except that an event whose rows the database refuses to store is
    parked: retried as it is, it would fail for ever and hold up every instance behind it.
    The events go in halves, and halves of those, until each refused one is found alone."""
    batch = Batch()
    _apply_or_split(cur, events, tables, batch)
    return batch


def _apply_or_split(cur: Any, events: list[Event], tables: Tables, batch: Batch) -> None:
    cur.execute("SAVEPOINT zapline_part")
    try:
        applied = apply_events(cur, events, tables=tables)
    except REFUSED as error:
        cur.execute("ROLLBACK TO SAVEPOINT zapline_part; RELEASE SAVEPOINT zapline_part")
        if len(events) == 1:
            _park(cur, events[0], _reason(error, park=True), batch, tables)
            return
        middle = len(events) // 2
        _apply_or_split(cur, events[:middle], tables, batch)
        _apply_or_split(cur, events[middle:], tables, batch)
        return
    cur.execute("RELEASE SAVEPOINT zapline_part")
    batch.feed += applied.feed
    batch.parked += applied.parked
    batch.new_media += applied.new_media
    batch.written.update(applied.written)


@dataclass
class Plan:
    """What a batch of events changes, worked out from the loaded states; nothing written yet.

    `changed` and `changed_chats` are the keys to write; `loaded` and `chat_loaded` are the
    states they had before the batch (for telling what the feed must carry).
    """

    states: dict[tuple[str, str], MessageState]
    loaded: dict[tuple[str, str], MessageState]
    changed: list[tuple[str, str]]
    created: set[tuple[str, str]]
    last_position: dict[tuple[str, str], int]
    chat_states: dict[tuple[str, str], ChatState]
    chat_loaded: dict[tuple[str, str], ChatState]
    changed_chats: list[tuple[str, str]]
    parked: list[tuple[Event, str]]

    def overlay(self) -> Overlay:
        """The states this plan leaves, for planning the next batch before this one commits."""
        return Overlay(
            {k: self.states[k] for k in self.changed},
            {k: self.chat_states[k] for k in self.changed_chats},
        )


@dataclass(frozen=True)
class Overlay:
    """States not committed yet that take precedence over the stored ones when loading."""

    messages: dict[tuple[str, str], MessageState] = field(default_factory=dict)
    chats: dict[tuple[str, str], ChatState] = field(default_factory=dict)


NO_OVERLAY = Overlay()


def apply_events(
    cur: Any, events: list[Event], *, park: bool = True, tables: Tables = LIVE
) -> Batch:
    """Apply events to the stored projection inside the caller's transaction.

    An event whose projection raises is parked with its error (or, with park=False, its
    error is re-raised) and the others go on. `tables` says where rows are read and written.
    """
    plan = plan_events(cur, events, park=park, tables=tables)
    return write_rendered(cur, render(plan, tables))


def plan_events(
    cur: Any,
    events: list[Event],
    *,
    park: bool = True,
    tables: Tables = LIVE,
    overlay: Overlay = NO_OVERLAY,
) -> Plan:
    """Load the states `events` touch (`overlay` first) and apply the events to them."""
    parked: list[tuple[Event, str]] = []
    # Each event is read once: what it does, to which message.
    operations: list[messages.Operation | None] = []
    for event in events:
        try:
            operations.append(messages.read(event))
        except Exception as error:
            operations.append(None)
            parked.append((event, _reason(error, park)))
    keys = [
        (e.instance, op[0]) if op is not None else None
        for e, op in zip(events, operations, strict=True)
    ]
    states = _load_messages(cur, {key for key in keys if key is not None}, tables, overlay)
    loaded = dict(states)
    per_event: list[list[messages.MessageChange]] = []
    last_position: dict[tuple[str, str], int] = {}
    for event, operation, key in zip(events, operations, keys, strict=True):
        if key is None:
            per_event.append([])
            continue
        before = states.get(key)
        try:
            changes = messages.apply_operation(states, event, operation)
        except Exception as error:
            _restore(states, key, before)
            changes = []
            parked.append((event, _reason(error, park)))
        per_event.append(changes)
        last_position[key] = event.position

    chat_keys = {
        (e.instance, jid)
        for e in events
        if e.type in chats.NAMING_EVENTS
        for jid in chats.targets(e)
    }
    chat_keys |= {(c.instance, c.message["chat_jid"]) for cs in per_event for c in cs}
    chat_states = _load_chats(cur, chat_keys, tables, overlay)
    chat_loaded = dict(chat_states)
    for event, changes in zip(events, per_event, strict=True):
        try:
            if event.type in chats.NAMING_EVENTS:
                chats.apply_event(chat_states, event)
            for change in changes:
                chats.apply_message(chat_states, change)
        except Exception as error:
            parked.append((event, _reason(error, park)))

    return Plan(
        states=states,
        loaded=loaded,
        changed=[k for k in states if states[k] is not loaded.get(k)],
        created={
            (c.instance, c.key_id) for cs in per_event for c in cs if c.kind == "message.created"
        },
        last_position=last_position,
        chat_states=chat_states,
        chat_loaded=chat_loaded,
        changed_chats=[k for k in chat_states if chat_states[k] is not chat_loaded.get(k)],
        parked=parked,
    )


@dataclass
class Rendered:
    """A plan as COPY lines and feed changes, made before its transaction: all the Python
    work of writing it, so the thread that writes mostly waits for PostgreSQL.

    `deferred` are the messages whose media has no id yet: the transaction gets it from the
    `media` table (or from what the batch before stored) and renders them then. `tables` is
    where it is written (a rebuild's shadow gets no feed changes).
    """

    plan: Plan
    tables: Tables = LIVE
    new_rows: list[str] = field(default_factory=list)  # messages with no row yet
    rows: list[str] = field(default_factory=list)  # messages to upsert
    holds: list[str] = field(default_factory=list)
    released: list[tuple[str, str]] = field(default_factory=list)  # holds to delete
    chats: list[str] = field(default_factory=list)
    feed: list[_Change] = field(default_factory=list)
    chat_feed: list[_Change] = field(default_factory=list)
    written: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    deferred: list[tuple[str, str]] = field(default_factory=list)


class _Change(NamedTuple):
    """A feed change waiting for its cursor; `tail` is its COPY line after the cursor."""

    kind: str
    key: tuple[str, str]
    data: dict[str, Any]
    text: str
    tail: str


def render(plan: Plan, tables: Tables = LIVE) -> Rendered:
    """Make a plan's COPY lines, and feed changes if `tables` has a feed; no database."""
    out = Rendered(plan, tables)
    for key in plan.changed:
        state = plan.states[key]
        if state.message is None:
            out.holds.append(
                _copy_line(
                    _copy_text(key[0]),
                    _copy_text(key[1]),
                    _copy_json(dumps(state.meta)),
                    _copy_json(dumps(list(state.held))),
                )
            )
            continue
        media = state.message.get("media")
        if media is not None and media.get("id") is None:
            out.deferred.append(key)
        else:
            _render_message(out, key, state.message, {})
    for key in plan.changed_chats:
        chat = plan.chat_states[key].chat
        text = dumps(chat)
        out.chats.append(
            _copy_line(
                _copy_text(key[0]),
                _copy_text(key[1]),
                _copy_text(chat["last_message_at"]),
                _copy_json(text),
                _copy_json(dumps(plan.chat_states[key].meta)),
            )
        )
        old = plan.chat_loaded.get(key)
        if tables.feed and (old is None or old.chat != chat):
            out.chat_feed.append(_change("chat.updated", key, chat, text))
    return out


def write_rendered(
    cur: Any,
    rendered: Rendered,
    written_before: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> Batch:
    """Write what `render` made to its tables inside the caller's transaction, completing
    it first with its deferred messages (`rendered` is used up).

    `written_before` holds the messages the previous batch wrote, when this plan was made
    from its overlay before it committed: the stored form (media id merged) is what a change
    is compared with.
    """
    plan, tables = rendered.plan, rendered.tables
    batch = Batch()
    _create_stages(cur)
    for event, reason in plan.parked:
        _park(cur, event, reason, batch, tables)
    if rendered.deferred:
        previous = written_before or {}
        stored = {key: _media_of(previous.get(key)) for key in rendered.deferred}
        wanted = [key for key in rendered.deferred if stored[key].get("id") is None]
        found = _media_ids(cur, plan.states, wanted, batch)
        for key in rendered.deferred:
            media_id, status = (
                found[key] if key in found else (stored[key]["id"], stored[key]["status"])
            )
            message = plan.states[key].message
            assert message is not None
            media = {**message["media"], "id": media_id, "status": status}
            _render_message(rendered, key, {**message, "media": media}, previous)
    batch.written = rendered.written
    writes = _Writes(cur)
    columns = "instance, key_id, chat_jid, sent_at, data, meta, position"
    if rendered.new_rows:
        _copy(cur, tables.messages, columns, rendered.new_rows)
    if rendered.rows:
        _upsert(writes, tables.messages, "messages", columns, "instance, key_id", rendered.rows)
    if rendered.holds:
        _upsert(
            writes,
            tables.holds,
            "message_holds",
            "instance, key_id, meta, held",
            "instance, key_id",
            rendered.holds,
            touch=False,
        )
    if rendered.released:
        instances, ids = _pairs(rendered.released)
        writes.execute(
            f"DELETE FROM {tables.holds} h USING {_KEYS} AS k(i, id)"
            " WHERE h.instance = k.i AND h.key_id = k.id",
            (instances, ids),
        )
    if rendered.chats:
        _upsert(
            writes,
            tables.chats,
            "chats",
            "instance, chat_jid, last_message_at, data, meta",
            "instance, chat_jid",
            rendered.chats,
        )
    writes.send()
    if tables.feed:
        batch.feed = _append_feed(cur, rendered.feed + rendered.chat_feed)
    return batch


def _render_message(
    out: Rendered,
    key: tuple[str, str],
    message: dict[str, Any],
    previous: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """Add a message's row, and its feed change if it differs from what is stored (what
    `previous` holds, else what was loaded)."""
    plan = out.plan
    text = dumps(message)
    escaped = _copy_json(text)
    out.written[key] = message
    old = plan.loaded.get(key)
    meta = plan.states[key].meta
    # A key loaded without a message has no messages row, and none can appear before this
    # commit: every writer of messages rows holds the projection's lock.
    (out.new_rows if old is None or old.message is None else out.rows).append(
        _copy_line(
            _copy_text(key[0]),
            _copy_text(key[1]),
            _copy_text(message["chat_jid"]),
            _copy_text(message["timestamp"]),
            escaped,
            _copy_json(dumps(meta)) if meta else "{}",
            str(plan.last_position.get(key, 0)),
        )
    )
    if old is not None and old.message is None:
        out.released.append(key)
    if not out.tables.feed:
        return
    stored = previous[key] if key in previous else _message_of(old)
    if stored != message:
        kind = "message.created" if key in plan.created else "message.updated"
        out.feed.append(_change(kind, key, message, text, escaped))


def _media_of(message: dict[str, Any] | None) -> dict[str, Any]:
    return (message or {}).get("media") or {}


def _message_of(state: MessageState | None) -> dict[str, Any] | None:
    return state.message if state is not None else None


def prune_feed(conn: Any) -> int:
    """Drop feed rows older than the retention keeps; return how many."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "DELETE FROM feed f USING feed_heads h"
            " WHERE f.instance = h.instance AND f.cursor <= h.cursor - %s"
            " AND f.created_at < now() - make_interval(days => %s)",
            (FEED_KEEP_CHANGES, FEED_KEEP_DAYS),
        )
        return int(cur.rowcount)


# --- reading and writing state -----------------------------------------------------------


def _lock(cur: Any, wait: bool) -> None:
    """Take the projection's lock, then its checkpoint row (left for the caller to fetch)."""
    checkpoint = "SELECT txid, position FROM checkpoints WHERE projection = %s FOR UPDATE"
    if wait:
        # One round trip for all three: a live batch makes a dozen, each adds latency.
        cur.execute(
            "SET LOCAL lock_timeout = '10s'; SELECT pg_advisory_xact_lock(%s); " + checkpoint,
            (lock_id(PROJECTION), PROJECTION),
        )
        return
    cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock_id(PROJECTION),))
    if not cur.fetchone()[0]:
        raise Busy(PROJECTION)
    cur.execute(checkpoint, (PROJECTION,))


# Keys go to PostgreSQL as two JSON arrays of text, zipped back into rows by _KEYS: for 5,000
# keys psycopg2 quotes two lists item by item in ~12 ms, orjson writes them in ~0.5 ms, and
# the server unpacks them in half the time it takes to parse two array literals.
_KEYS = "ROWS FROM (json_array_elements_text(%s::json), json_array_elements_text(%s::json))"


def _pairs(keys: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """(instances, second parts) of keys, as the two JSON arrays _KEYS takes."""
    keys = list(keys)
    return dumps([k[0] for k in keys]), dumps([k[1] for k in keys])


def _load_messages(
    cur: Any, keys: set[tuple[str, str]], tables: Tables, overlay: Overlay
) -> dict[tuple[str, str], MessageState]:
    pending = {k: overlay.messages[k] for k in keys if k in overlay.messages}
    keys = keys - pending.keys()
    if not keys:
        return pending
    instances, ids = _pairs(keys)
    # One statement for both tables: the keys are sent and parsed once.
    cur.execute(
        "WITH k AS MATERIALIZED"
        f" (SELECT * FROM {_KEYS} AS k(instance, key_id))"
        f" SELECT m.instance, m.key_id, m.data, m.meta, NULL FROM {tables.messages} m"
        " JOIN k ON m.instance = k.instance AND m.key_id = k.key_id"
        f" UNION ALL SELECT h.instance, h.key_id, NULL, h.meta, h.held FROM {tables.holds} h"
        " JOIN k ON h.instance = k.instance AND h.key_id = k.key_id",
        (instances, ids),
    )
    states: dict[tuple[str, str], MessageState] = {}
    for i, k, data, meta, held in cur.fetchall():
        if held is None:
            states[(i, k)] = MessageState(data, meta, ())
        else:
            states.setdefault((i, k), MessageState(None, meta, tuple(held)))
    return {**states, **pending}


def _load_chats(
    cur: Any, keys: set[tuple[str, str]], tables: Tables, overlay: Overlay
) -> dict[tuple[str, str], ChatState]:
    pending = {k: overlay.chats[k] for k in keys if k in overlay.chats}
    keys = keys - pending.keys()
    if not keys:
        return pending
    instances, jids = _pairs(keys)
    cur.execute(
        f"SELECT c.instance, c.chat_jid, c.data, c.meta FROM {tables.chats} c"
        f" JOIN {_KEYS} AS k(instance, chat_jid)"
        " ON c.instance = k.instance AND c.chat_jid = k.chat_jid",
        (instances, jids),
    )
    return {**{(i, j): ChatState(data, meta) for i, j, data, meta in cur.fetchall()}, **pending}


def _media_ids(
    cur: Any,
    states: dict[tuple[str, str], MessageState],
    keys: list[tuple[str, str]],
    batch: Batch,
) -> dict[tuple[str, str], tuple[int, str]]:
    """Create (or find) the media rows of messages whose media has no id yet, in one go.

    Ids the previous batch just wrote are not asked for again: an upsert would find the same
    row, but burn an identity value each time.
    """
    if not keys:
        return {}
    media = [_media_of(states[key].message) for key in keys]
    cur.execute(
        "INSERT INTO media (instance, key_id, mimetype, size, sha256)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[])"
        " ON CONFLICT (instance, key_id) DO UPDATE SET"
        " mimetype = coalesce(media.mimetype, EXCLUDED.mimetype),"
        " size = coalesce(media.size, EXCLUDED.size),"
        " sha256 = coalesce(media.sha256, EXCLUDED.sha256)"
        " RETURNING instance, key_id, id, status, (xmax = 0)",
        (
            [key[0] for key in keys],
            [key[1] for key in keys],
            [m.get("mimetype") for m in media],
            [m.get("size") for m in media],
            [m.get("sha256") for m in media],
        ),
    )
    found = {}
    for instance, key_id, media_id, status, inserted in cur.fetchall():
        found[(instance, key_id)] = (media_id, status)
        if inserted:
            batch.new_media.append(media_id)
    return found


def append_feed(
    cur: Any, items: list[tuple[str, tuple[str, str], dict[str, Any], str]]
) -> list[FeedItem]:
    """Give each change (kind, key, data, data as JSON) the next cursor of its instance and
    store it in the feed."""
    return _append_feed(cur, [_change(*item) for item in items])


def _change(
    kind: str, key: tuple[str, str], data: dict[str, Any], text: str, escaped: str | None = None
) -> _Change:
    """A feed change; `escaped` is `_copy_json(text)` when the caller has it already."""
    escaped = _copy_json(text) if escaped is None else escaped
    return _Change(kind, key, data, text, f"{kind}\t{_copy_text(key[1])}\t{escaped}\n")


def _append_feed(cur: Any, changes: list[_Change]) -> list[FeedItem]:
    if not changes:
        return []
    counts: dict[str, int] = {}
    for change in changes:
        instance = change.key[0]
        counts[instance] = counts.get(instance, 0) + 1
    # The feed_heads row stays locked until commit: cursors become visible in commit order.
    psycopg2.extras.execute_values(
        cur,
        "INSERT INTO feed_heads AS h (instance, cursor) VALUES %s ON CONFLICT (instance)"
        " DO UPDATE SET cursor = h.cursor + EXCLUDED.cursor RETURNING instance, cursor",
        sorted(counts.items()),
        page_size=1000,
    )
    next_cursor = {instance: head - counts[instance] + 1 for instance, head in cur.fetchall()}
    escaped = {instance: _copy_text(instance) for instance in counts}
    feed, rows = [], []
    for kind, key, data, text, tail in changes:
        instance = key[0]
        cursor = next_cursor[instance]
        next_cursor[instance] += 1
        feed.append(FeedItem(instance, cursor, kind, data, text))
        rows.append(f"{escaped[instance]}\t{cursor}\t{tail}")
    _copy(cur, "feed", "instance, cursor, kind, key, data", rows)
    return feed


class _Writes:
    """Statements whose results nobody reads, sent together in one round trip."""

    def __init__(self, cur: Any) -> None:
        self.cursor = cur
        self._statements: list[bytes] = []

    def execute(self, sql: str, params: tuple[Any, ...]) -> None:
        self._statements.append(self.cursor.mogrify(sql, params))

    def send(self) -> None:
        if self._statements:
            self.cursor.execute(b";\n".join(self._statements))
            self._statements = []


# Rows are sent with COPY, which is about twice as fast on the server as INSERT ... SELECT
# from one JSON parameter: straight into the feed and new messages, and into these
# per-session staging tables for the upserts, which move them out with DELETE ... RETURNING
# (so a second batch in the same transaction starts from an empty stage).
_STAGE = {
    "messages": "zapline_stage_messages",
    "message_holds": "zapline_stage_holds",
    "chats": "zapline_stage_chats",
}
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")


def _create_stages(cur: Any) -> None:
    cur.execute(
        "".join(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS)"
            " ON COMMIT DELETE ROWS;"
            for table, stage in _STAGE.items()
        )
    )


def _upsert(
    writes: _Writes,
    table: str,
    like: str,
    columns: str,
    key: str,
    lines: list[str],
    *,
    touch: bool = True,
) -> None:
    """Insert or update COPY lines in `table` (a `like` table or its shadow) on `key`.

    The lines go to `like`'s stage now; the statement that moves them into `table` waits in
    `writes`. `touch` sets `updated_at` on the rows it updates.
    """
    stage = _STAGE[like]
    _copy(writes.cursor, stage, columns, lines)
    updates = [f"{c} = EXCLUDED.{c}" for c in columns.split(", ") if c not in key.split(", ")]
    writes.execute(
        f"WITH staged AS (DELETE FROM {stage} RETURNING *)"
        f" INSERT INTO {table} ({columns}) SELECT {columns} FROM staged"
        f" ON CONFLICT ({key}) DO UPDATE SET "
        + ", ".join(updates + (["updated_at = now()"] if touch else [])),
        (),
    )


def _copy(cur: Any, table: str, columns: str, lines: list[str]) -> None:
    """COPY lines made by `_copy_line` into `table`.

    Encoded once and sent in large chunks: psycopg2 reads a text file 8 KB at a time and
    encodes each piece, which took ~2.5x the CPU for a batch's feed rows.
    """
    codec = psycopg2.extensions.encodings[cur.connection.encoding]
    data = io.BytesIO("".join(lines).encode(codec))
    cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN", data, size=1 << 20)


def _copy_line(*fields: str) -> str:
    """One row in COPY's text format, from fields escaped by `_copy_text` or `_copy_json`."""
    return "\t".join(fields) + "\n"


def _copy_text(value: str | None) -> str:
    if value is None:
        return "\\N"
    if _COPY_SPECIAL.search(value) is None:
        return value
    return value.translate(_COPY_ESCAPES)


def _copy_json(text: str) -> str:
    """JSON text escaped for COPY: JSON never holds a raw tab, newline or carriage return,
    so doubling its backslashes is all it takes (and far cheaper than a character scan)."""
    return text.replace("\\", "\\\\")


def _restore(states: dict[Any, Any], key: Any, state: Any) -> None:
    if state is None:
        states.pop(key, None)
    else:
        states[key] = state


def _reason(error: Exception, park: bool) -> str:
    """The parked reason for an event's error, or the error itself when not parking."""
    if not park:
        raise error
    return f"{type(error).__name__}: {error}"[:2000]


def _park(cur: Any, event: Event, reason: str, batch: Batch, tables: Tables) -> None:
    log.warning("parked event", extra={"fields": {"position": event.position, "error": reason}})
    cur.execute(
        "INSERT INTO parked (projection, position, error) VALUES (%s, %s, %s)"
        " ON CONFLICT (projection, position) DO UPDATE SET error = EXCLUDED.error,"
        " attempts = parked.attempts + 1, parked_at = now()",
        (tables.parked_as, event.position, reason),
    )
    batch.parked.append(event.position)
