"""Writing a plan: its rows as COPY lines and its feed changes, made before the transaction
(`render`), then written inside it (`write_rendered`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from events.jsontext import dumps
from projections import bulk
from projections.feed import Change, append_changes, change
from projections.messages import MessageState
from projections.plan import Plan
from projections.tables import LIVE, Batch, Tables, park


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
    feed: list[Change] = field(default_factory=list)
    chat_feed: list[Change] = field(default_factory=list)
    written: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    deferred: list[tuple[str, str]] = field(default_factory=list)


def render(plan: Plan, tables: Tables = LIVE) -> Rendered:
    """Make a plan's COPY lines, and feed changes if `tables` has a feed; no database."""
    out = Rendered(plan, tables)
    for key in plan.changed:
        state = plan.states[key]
        if state.message is None:
            out.holds.append(
                bulk.copy_line(
                    bulk.copy_text(key[0]),
                    bulk.copy_text(key[1]),
                    bulk.copy_json(dumps(state.meta)),
                    bulk.copy_json(dumps(list(state.held))),
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
            bulk.copy_line(
                bulk.copy_text(key[0]),
                bulk.copy_text(key[1]),
                bulk.copy_text(chat["last_message_at"]),
                bulk.copy_json(text),
                bulk.copy_json(dumps(plan.chat_states[key].meta)),
            )
        )
        old = plan.chat_loaded.get(key)
        if tables.feed and (old is None or old.chat != chat):
            out.chat_feed.append(change("chat.updated", key, chat, text))
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
    bulk.create_stages(cur)
    for event, reason in plan.parked:
        park(cur, event, reason, batch, tables)
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
    writes = bulk.Writes(cur)
    columns = "instance, key_id, chat_jid, sent_at, data, meta, position"
    if rendered.new_rows:
        bulk.copy(cur, tables.messages, columns, rendered.new_rows)
    if rendered.rows:
        bulk.upsert(writes, tables.messages, "messages", columns, "instance, key_id", rendered.rows)
    if rendered.holds:
        bulk.upsert(
            writes,
            tables.holds,
            "message_holds",
            "instance, key_id, meta, held",
            "instance, key_id",
            rendered.holds,
            touch=False,
        )
    if rendered.released:
        instances, ids = bulk.pairs(rendered.released)
        writes.execute(
            f"DELETE FROM {tables.holds} h USING {bulk.KEYS} AS k(i, id)"
            " WHERE h.instance = k.i AND h.key_id = k.id",
            (instances, ids),
        )
    if rendered.chats:
        bulk.upsert(
            writes,
            tables.chats,
            "chats",
            "instance, chat_jid, last_message_at, data, meta",
            "instance, chat_jid",
            rendered.chats,
        )
    writes.send()
    if tables.feed:
        batch.feed = append_changes(cur, rendered.feed + rendered.chat_feed)
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
    escaped = bulk.copy_json(text)
    out.written[key] = message
    old = plan.loaded.get(key)
    meta = plan.states[key].meta
    # A key loaded without a message has no messages row, and none can appear before this
    # commit: every writer of messages rows holds the projection's lock.
    (out.new_rows if old is None or old.message is None else out.rows).append(
        bulk.copy_line(
            bulk.copy_text(key[0]),
            bulk.copy_text(key[1]),
            bulk.copy_text(message["chat_jid"]),
            bulk.copy_text(message["timestamp"]),
            escaped,
            bulk.copy_json(dumps(meta)) if meta else "{}",
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
        out.feed.append(change(kind, key, message, text, escaped))


def _media_of(message: dict[str, Any] | None) -> dict[str, Any]:
    return (message or {}).get("media") or {}


def _message_of(state: MessageState | None) -> dict[str, Any] | None:
    return state.message if state is not None else None


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
