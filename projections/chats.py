"""Chats projection: message changes and naming events -> one public chat per JID. Pure.

- Last message: the message with the greatest `timestamp` seen; an older message arriving
  late does not replace it, an edit or delete of the current last message refreshes the
  preview. In the same second, the message created later wins.
- Unread count: incoming (not from_me) messages newer than the latest outgoing message.
  Each message counts once, when it is created ("message.updated" never counts). An outgoing
  message resets the count to the incoming messages newer than itself, which is 0 unless it
  arrived late; those are found in a window of the last 50 counted incoming messages, so a
  very late outgoing message after more than 50 newer incoming ones leaves at most 50.
  The window is one string, "time#crc32 of key id" entries in order, joined by commas: each
  chat row is rewritten once per batch, and at this size it stays small enough to be stored
  uncompressed (a list of [time, key id] pairs made chat upserts ~3x slower). Two different
  messages of one chat in the same second whose key ids share a CRC-32 (a 1 in 4 billion
  chance) would count as one.
- Name: a chats/contacts/groups event that names the chat wins, the last one applied; until
  one does, a direct chat takes the push name of its newest incoming message. Groups and
  broadcasts (`status@broadcast`: stories) never take push names (those name the participant,
  not the chat). A naming event creates no chat for a `@lid` JID: messages go to the phone
  JID's chat, so such a chat would stay empty; it names one that messages already made.
"""

from __future__ import annotations

import bisect
import zlib
from typing import Any, NamedTuple

from events.event import Event
from projections import payload as p
from projections.messages import MessageChange

PREVIEW_LENGTH = 100
_UNREAD_WINDOW = 50

_CHAT_EVENTS = frozenset({"chats.upsert", "chats.update"})
_CONTACT_EVENTS = frozenset({"contacts.upsert", "contacts.update"})
# groups.update is not delivered by 2.3.6's webhook (an event-name mismatch) but has the
# same shape as groups.upsert, so it is read the same way should it ever arrive.
_GROUP_EVENTS = frozenset({"groups.upsert", "groups.update"})
NAMING_EVENTS = _CHAT_EVENTS | _CONTACT_EVENTS | _GROUP_EVENTS


class ChatState(NamedTuple):
    """The public chat and the bookkeeping needed to keep it right out of order."""

    chat: dict[str, Any]
    meta: dict[str, Any]


class ChatChange(NamedTuple):
    """A chat as it is after one change."""

    kind: str
    instance: str
    chat_jid: str
    chat: dict[str, Any]


def targets(event: Event) -> list[str]:
    """Return the chat JIDs whose names this event sets; [] for any other event."""
    return [jid for jid, _name in _names(event)]


def apply_event(chats: dict[tuple[str, str], ChatState], event: Event) -> list[ChatChange]:
    """Apply the chat names a chats/contacts/groups event carries."""
    changes: list[ChatChange] = []
    for jid, name in _names(event):
        key = (event.instance, jid)
        old = chats.get(key)
        if old is None and p.is_lid(jid):
            # A contact known only by its LID: its messages go to the phone JID's chat, so a
            # chat made here would stay empty.
            continue
        chat = old.chat if old is not None else _new_chat(event.instance, jid)
        meta = old.meta if old is not None else {}
        if chat["name"] != name:
            chat = {**chat, "name": name}
        if not meta.get("named"):
            meta = {**meta, "named": True}
        if old is not None and chat is old.chat and meta is old.meta:
            continue
        chats[key] = ChatState(chat, meta)
        if old is None or chat != old.chat:
            changes.append(ChatChange("chat.updated", event.instance, jid, chat))
    return changes


def apply_message(
    chats: dict[tuple[str, str], ChatState], change: MessageChange
) -> list[ChatChange]:
    """Fold one message change into its chat: last message, unread count, push name."""
    message = change.message
    jid = message["chat_jid"]
    if not jid:
        return []
    key = (change.instance, jid)
    old = chats.get(key)
    chat = dict(old.chat) if old is not None else _new_chat(change.instance, jid)
    meta = dict(old.meta) if old is not None else {}
    created = change.kind == "message.created"
    ts = message["timestamp"]

    if message["key_id"] == chat["last_message_key_id"] or _is_newer(
        ts, chat["last_message_at"], created
    ):
        chat["last_message_at"] = ts
        chat["last_message_key_id"] = message["key_id"]
        chat["last_message_preview"] = preview(message)

    if created and message["from_me"]:
        _count_outgoing(chat, meta, ts)
    elif created:
        _count_incoming(chat, meta, ts, message["key_id"])

    push_name = message["push_name"]
    if (
        push_name
        and not message["from_me"]
        and not chat["is_group"]
        and not jid.endswith("@broadcast")
        and not meta.get("named")
        and (ts or "") >= meta.get("push_at", "")
    ):
        chat["name"] = push_name
        meta["push_at"] = ts or ""

    if old is not None and chat == old.chat:
        if meta != old.meta:
            chats[key] = ChatState(chat, meta)
        return []
    chats[key] = ChatState(chat, meta)
    return [ChatChange("chat.updated", change.instance, jid, chat)]


def preview(message: dict[str, Any]) -> str:
    """Return the one-line preview of a message: its text, caption, or "[type]"."""
    if message["deleted"]:
        return "[deleted]"
    text = message["text"] or message["caption"] or f"[{message['type']}]"
    if len(text) > PREVIEW_LENGTH:
        return text[: PREVIEW_LENGTH - 1] + "…"
    return text


def _is_newer(ts: str | None, last: str | None, created: bool) -> bool:
    if last is None:
        return True
    if ts is None:
        return False
    # Same-format ISO strings ("YYYY-MM-DDTHH:MM:SSZ") compare like the times they name.
    return ts > last or (created and ts == last)


def _count_outgoing(chat: dict[str, Any], meta: dict[str, Any], ts: str | None) -> None:
    last_out = meta.get("last_out_at")
    if ts is not None and last_out is not None and ts <= last_out:
        return  # an older reply arriving late: the newer one already decided the count
    if ts is not None:
        meta["last_out_at"] = ts
    window = [entry for entry in _window(meta) if ts is not None and entry.partition("#")[0] > ts]
    meta["unread"] = ",".join(window)
    chat["unread_count"] = len(window)


def _count_incoming(
    chat: dict[str, Any], meta: dict[str, Any], ts: str | None, key_id: str
) -> None:
    last_out = meta.get("last_out_at")
    if ts is not None and last_out is not None and ts <= last_out:
        return  # older than our latest reply: already seen when we answered
    # Unknown time sorts oldest, so the next reply clears it.
    entry = f"{ts or ''}#{zlib.crc32(key_id.encode()):08x}"
    stored = meta.get("unread", "")
    if isinstance(stored, str) and (not stored or entry > stored[stored.rfind(",") + 1 :]):
        # The usual case, a message newer than all counted ones: no need to split the window.
        stored = f"{stored},{entry}" if stored else entry
        if stored.count(",") >= _UNREAD_WINDOW:
            stored = stored[stored.index(",") + 1 :]
        meta["unread"] = stored
    else:
        window = _window(meta)
        at = bisect.bisect_left(window, entry)
        if at < len(window) and window[at] == entry:
            return  # counted already (a message's time never changes)
        meta["unread"] = ",".join([*window[:at], entry, *window[at:]][-_UNREAD_WINDOW:])
    chat["unread_count"] = chat["unread_count"] + 1


def _window(meta: dict[str, Any]) -> list[str]:
    """The unread window's entries, oldest first."""
    stored = meta.get("unread", "")
    if isinstance(stored, list):  # stored before 2026-11-30 as [[time, key id], ...]
        return sorted(f"{ts}#{zlib.crc32(key_id.encode()):08x}" for ts, key_id in stored)
    return stored.split(",") if stored else []


def _new_chat(instance: str, jid: str) -> dict[str, Any]:
    return {
        "instance": instance,
        "chat_jid": jid,
        "name": None,
        "is_group": jid.endswith("@g.us"),
        "last_message_at": None,
        "last_message_preview": None,
        "last_message_key_id": None,
        "unread_count": 0,
    }


def _names(event: Event) -> list[tuple[str, str]]:
    """Return the (chat JID, name) pairs an event sets, skipping entries without a name."""
    if event.type in _CHAT_EVENTS:
        jid_field, name_field = "remoteJid", "name"
    elif event.type in _CONTACT_EVENTS:
        jid_field, name_field = "remoteJid", "pushName"
    elif event.type in _GROUP_EVENTS:
        jid_field, name_field = "id", "subject"
    else:
        return []
    if len(event.instance) > p.LONGEST_ID:
        return []
    data = event.payload.get("data")
    # contacts.update comes as a single object after each message (research notes 3.4).
    entries = data if isinstance(data, list) else [data]
    names: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        jid = p.normalize_jid(entry.get(jid_field))
        name = entry.get(name_field)
        if jid and len(jid) <= p.LONGEST_ID and isinstance(name, str) and name.strip():
            names[jid] = name
    return list(names.items())
