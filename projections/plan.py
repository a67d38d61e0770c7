"""Planning a batch: load the states its events touch, then apply the events to them in
memory. Nothing is written here (see projections/writer.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from events.event import Event
from projections import bulk, chats, messages
from projections.chats import ChatState
from projections.messages import MessageState
from projections.tables import LIVE, Tables, reason


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
            parked.append((event, reason(error, park)))
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
            parked.append((event, reason(error, park)))
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
            parked.append((event, reason(error, park)))

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


def _from_overlay(keys: set[Any], overlaid: dict[Any, Any]) -> tuple[dict[Any, Any], set[Any]]:
    """Split `keys` into the states the overlay holds and the keys left to load."""
    pending = {k: overlaid[k] for k in keys if k in overlaid}
    return pending, keys - pending.keys()


def _load_messages(
    cur: Any, keys: set[tuple[str, str]], tables: Tables, overlay: Overlay
) -> dict[tuple[str, str], MessageState]:
    pending, keys = _from_overlay(keys, overlay.messages)
    if not keys:
        return pending
    instances, ids = bulk.pairs(keys)
    # One statement for both tables: the keys are sent and parsed once.
    cur.execute(
        "WITH k AS MATERIALIZED"
        f" (SELECT * FROM {bulk.KEYS} AS k(instance, key_id))"
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
    pending, keys = _from_overlay(keys, overlay.chats)
    if not keys:
        return pending
    instances, jids = bulk.pairs(keys)
    cur.execute(
        f"SELECT c.instance, c.chat_jid, c.data, c.meta FROM {tables.chats} c"
        f" JOIN {bulk.KEYS} AS k(instance, chat_jid)"
        " ON c.instance = k.instance AND c.chat_jid = k.chat_jid",
        (instances, jids),
    )
    return {**{(i, j): ChatState(data, meta) for i, j, data, meta in cur.fetchall()}, **pending}


def _restore(states: dict[Any, Any], key: Any, state: Any) -> None:
    if state is None:
        states.pop(key, None)
    else:
        states[key] = state
