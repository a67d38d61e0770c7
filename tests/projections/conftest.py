"""Builders for the events the projection tests feed in, and the real webhook fixtures."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from events.event import Event
from projections import messages
from projections.messages import MessageChange, MessageState

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "evolution"

INSTANCE = "acme"
ME = "5511888880000@s.whatsapp.net"
CHAT = "5511999990000@s.whatsapp.net"
GROUP = "120363000000000001@g.us"
MEMBER = "24666483777619@lid"
T0 = 1750000000  # 2025-06-15T15:06:40Z

_positions = itertools.count(1)


def load(name: str) -> dict[str, Any]:
    """Return a fresh copy of one fixture body."""
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return body


def fixture_names(*prefixes: str) -> list[str]:
    """Return the fixture file names starting with any of the prefixes, sorted."""
    return sorted(path.name for path in FIXTURES.glob("*.json") if path.name.startswith(prefixes))


def event(body: dict[str, Any], position: int | None = None) -> Event:
    """Wrap a webhook body in an Event as the store would hand it to a projection."""
    if "event" not in body and isinstance(body.get("body"), dict):
        body = body["body"]  # an n8n capture: the webhook body sits under `body`
    return Event(
        position=next(_positions) if position is None else position,
        instance=body.get("instance", INSTANCE),
        type=body["event"],
        payload=body,
    )


def fixture_event(name: str, position: int | None = None) -> Event:
    """Return one fixture as an Event."""
    return event(load(name), position)


def envelope(event_type: str, data: Any, position: int | None = None) -> Event:
    """Wrap `data` in the Evolution envelope for INSTANCE."""
    body = {
        "event": event_type,
        "instance": INSTANCE,
        "data": data,
        "destination": "https://crm.example/webhook",
        "date_time": "2025-06-15T12:06:40.000Z",
        "sender": ME,
        "server_url": "https://evolution.example",
        "apikey": None,
    }
    return event(body, position)


def upsert(
    key_id: str,
    text: str | None = "hello",
    *,
    position: int | None = None,
    event_type: str = "messages.upsert",
    from_me: bool = False,
    chat: str = CHAT,
    participant: str | None = None,
    ts: Any = T0,
    status: Any = "DELIVERY_ACK",
    push_name: str | None = "Ana",
    message: dict[str, Any] | None = None,
) -> Event:
    """Return a v2 messages.upsert (or send.message) carrying a text or the given message."""
    key: dict[str, Any] = {"remoteJid": chat, "fromMe": from_me, "id": key_id}
    if participant is not None:
        key["participant"] = participant
    data: dict[str, Any] = {
        "key": key,
        "message": message if message is not None else {"conversation": text},
        "messageType": next(iter(message)) if message else "conversation",
        "messageTimestamp": ts,
        "instanceId": "00000000-0000-0000-0000-000000000001",
        "source": "android",
    }
    if push_name is not None:
        data["pushName"] = push_name
    if status is not None:
        data["status"] = status
    return envelope(event_type, data, position)


def status_update(key_id: str, status: Any, *, position: int | None = None) -> Event:
    """Return a v2 messages.update for one key id."""
    data = {
        "messageId": "cmqce0han00dlmf5xjswf5shp",
        "keyId": key_id,
        "remoteJid": CHAT,
        "fromMe": True,
        "status": status,
        "instanceId": "00000000-0000-0000-0000-000000000001",
    }
    return envelope("messages.update", data, position)


def edit(
    key_id: str,
    text: str,
    *,
    ts_ms: Any,
    position: int | None = None,
    caption: bool = False,
) -> Event:
    """Return a 2.3.1+ messages.edited MESSAGE_EDIT for a text (or a media caption)."""
    edited = {"imageMessage": {"caption": text}} if caption else {"conversation": text}
    data = {
        "key": {"remoteJid": CHAT, "fromMe": False, "id": key_id},
        "type": "MESSAGE_EDIT",
        "editedMessage": edited,
        "timestampMs": ts_ms,
    }
    return envelope("messages.edited", data, position)


def revoke(key_id: str, *, position: int | None = None) -> Event:
    """Return a 2.3.1+ messages.edited REVOKE."""
    data = {
        "key": {"remoteJid": CHAT, "fromMe": False, "id": key_id},
        "type": "REVOKE",
        "timestampMs": str(T0 * 1000 + 5000),
    }
    return envelope("messages.edited", data, position)


def delete(key_id: str, *, position: int | None = None) -> Event:
    """Return a messages.delete carrying the Baileys key of the revoked message."""
    data = {"remoteJid": CHAT, "fromMe": False, "id": key_id}
    return envelope("messages.delete", data, position)


def reaction(
    target: str,
    emoji: str,
    *,
    ts_ms: Any,
    position: int | None = None,
    chat: str = CHAT,
    participant: str | None = None,
    from_me: bool = False,
) -> Event:
    """Return a messages.upsert carrying a reactionMessage on `target`."""
    message = {
        "reactionMessage": {
            "key": {"remoteJid": chat, "fromMe": not from_me, "id": target},
            "text": emoji,
            "senderTimestampMs": ts_ms,
        }
    }
    reaction_id = f"R{next(_positions)}"
    return upsert(
        reaction_id,
        position=position,
        chat=chat,
        participant=participant,
        from_me=from_me,
        message=message,
    )


def run(
    events: list[Event], states: dict[tuple[str, str], MessageState] | None = None
) -> tuple[dict[tuple[str, str], MessageState], list[MessageChange]]:
    """Apply events in order, as the runner would, and return the states and all changes."""
    states = {} if states is None else states
    changes: list[MessageChange] = []
    for item in events:
        changes.extend(messages.apply(states, item))
    return states, changes


def message_of(states: dict[tuple[str, str], MessageState], key_id: str) -> dict[str, Any]:
    """Return the public message for key_id in INSTANCE, failing if it has not arrived."""
    message = states[(INSTANCE, key_id)].message
    assert message is not None
    return message
