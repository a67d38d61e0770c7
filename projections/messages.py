"""Messages projection: webhook events -> one public message per (instance, key id). Pure.

Evolution delivers out of order (design invariant 7), so every operation on a message is a
merge that gives the same result in any order and when repeated: statuses only move forward,
the latest edit and the latest reaction per sender win by their WhatsApp timestamp (then by
log position), a delete is a flag, and of two copies of a message (the send.message echo and
the messages.upsert) the upsert's values win, whichever came first (ingest keeps at most one
copy of each kind per key id). An operation whose message has not arrived yet is held in the
state and folded in when the message arrives, so the message is born ("message.created") with
all of them.

Dicts held in states and changes are never mutated once built; a change copies what it
touches, so states preloaded by the runner can be shared freely.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from events.event import Event
from projections import payload as p

STATUS_RANK = {"pending": 0, "error": 1, "server_ack": 2, "delivered": 3, "read": 4, "played": 5}

_STATUS_NAMES = {
    "ERROR": "error",
    "PENDING": "pending",
    "SERVER_ACK": "server_ack",
    "DELIVERY_ACK": "delivered",
    "READ": "read",
    "PLAYED": "played",
}
# v1 sends Baileys' numeric WebMessageInfo.Status (Evolution's renderStatus maps 0..5 the same).
_STATUS_CODES = ("error", "pending", "server_ack", "delivered", "read", "played")

_CONTENT_EVENTS = frozenset({"messages.upsert", "send.message"})
# send.message.update is an edit made through the API and carries the same protocolMessage.
_EDIT_EVENTS = frozenset({"messages.edited", "send.message.update"})

# Contents that are not a message in the chat: a poll vote (Evolution reports votes on
# messages.update), a pin or keep-in-chat, the parent of an album (its photos come as
# messages of their own), and encrypted reactions, edits and comments nobody decrypts.
_NOT_MESSAGES = frozenset(
    {
        "pollUpdateMessage",
        "pinInChatMessage",
        "keepInChatMessage",
        "albumMessage",
        "encReactionMessage",
        "secretEncryptedMessage",
        "encEventResponseMessage",
        "encCommentMessage",
    }
)

# Fields the two copies of a message (send.message echo, messages.upsert) may both give.
_COPIED = ("chat_jid", "sender", "push_name", "text", "caption", "timestamp", "quoted_key_id")


class MessageState(NamedTuple):
    """What the projection knows about one key id: the message, merge bookkeeping, held ops."""

    message: dict[str, Any] | None
    meta: dict[str, Any]
    held: tuple[dict[str, Any], ...]


class MessageChange(NamedTuple):
    """A message as it is after one event changed it."""

    kind: str
    instance: str
    key_id: str
    message: dict[str, Any]


# What an event does to a message: (its key id, the operation).
Operation = tuple[str, dict[str, Any]]


def apply(states: dict[tuple[str, str], MessageState], event: Event) -> list[MessageChange]:
    """Apply one event to `states` in place and return the message changes it makes.

    Raises:
        ValueError: the event is of a type we handle but its payload is structurally broken.
    """
    return apply_operation(states, event, read(event))


def apply_operation(
    states: dict[tuple[str, str], MessageState], event: Event, operation: Operation | None
) -> list[MessageChange]:
    """Apply what `read(event)` returned to `states` in place; return the changes it makes."""
    if operation is None:
        return []
    key_id, op = operation
    skey = (event.instance, key_id)
    old = states.get(skey)
    if op["op"] == "message":
        return _arrive(states, skey, old, op["message"], op["upsert"])
    if old is None or old.message is None:
        held = old.held if old is not None else ()
        if any(h["pos"] == op["pos"] for h in held):
            return []
        states[skey] = MessageState(None, old.meta if old is not None else {}, (*held, op))
        return []
    message, meta = _fold(old.message, old.meta, op)
    if message is old.message and meta is old.meta:
        return []
    states[skey] = MessageState(message, meta, old.held)
    if message == old.message:
        return []
    return [MessageChange("message.updated", event.instance, key_id, message)]


def _arrive(
    states: dict[tuple[str, str], MessageState],
    skey: tuple[str, str],
    old: MessageState | None,
    new: dict[str, Any],
    upsert: bool,
) -> list[MessageChange]:
    instance, key_id = skey
    if old is None or old.message is None:
        message, meta = new, old.meta if old is not None else {}
        for op in sorted(old.held if old is not None else (), key=lambda h: h["pos"]):
            message, meta = _fold(message, meta, op)
        states[skey] = MessageState(message, meta, ())
        return [MessageChange("message.created", instance, key_id, message)]
    merged = _merge(old.message, new, upsert, edited="edit" in old.meta)
    if merged is old.message:
        return []
    states[skey] = MessageState(merged, old.meta, old.held)
    return [MessageChange("message.updated", instance, key_id, merged)]


def _merge(old: dict[str, Any], new: dict[str, Any], upsert: bool, edited: bool) -> dict[str, Any]:
    """Merge the other copy of a message into `old`; keep the higher status.

    What the copies both give is taken from the upsert (`upsert`: `new` is it), WhatsApp's
    own record, so the order they arrive in does not matter; but a phone chat over a LID one,
    and never over an edit's text.
    """
    out: dict[str, Any] | None = None
    for name in _COPIED:
        value = _copied(name, old[name], new[name], upsert, edited)
        if value != old[name]:
            out = out if out is not None else dict(old)
            out[name] = value
    if new["type"] not in ("unknown", old["type"]) and (old["type"] == "unknown" or upsert):
        out = out if out is not None else dict(old)
        out["type"] = new["type"]
    if STATUS_RANK[new["status"]] > STATUS_RANK[old["status"]]:
        out = out if out is not None else dict(old)
        out["status"] = new["status"]
    media = _merge_media(old["media"], new["media"])
    if media is not old["media"]:
        out = out if out is not None else dict(old)
        out["media"] = media
    return out if out is not None else old


def _copied(name: str, old: Any, new: Any, upsert: bool, edited: bool) -> Any:
    if new is None or old is None:
        return old if new is None else new
    if name == "chat_jid" and p.is_lid(old) != p.is_lid(new):
        return old if p.is_lid(new) else new
    if name in ("text", "caption") and edited:
        return old
    return new if upsert else old


def _merge_media(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any] | None:
    if new is None:
        return old
    if old is None:
        return new
    # The runner adds keys (the media id, a later status) we must keep: fill, never replace.
    missing = {k: v for k, v in new.items() if v is not None and old.get(k) is None}
    return {**old, **missing} if missing else old


def _fold(
    message: dict[str, Any], meta: dict[str, Any], op: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply one operation to a message; return the same objects when it changes nothing."""
    kind = op["op"]
    if kind == "status":
        if STATUS_RANK[op["status"]] > STATUS_RANK[message["status"]]:
            message = {**message, "status": op["status"]}
    elif kind == "delete":
        # Keep text and caption: the CRM keeps a record of what was said; the front end
        # decides how to show a message the sender revoked.
        if not message["deleted"]:
            message = {**message, "deleted": True}
    elif kind == "edit":
        order = [op["ts"], op["pos"]]
        if "edit" not in meta or order > meta["edit"]:
            meta = {**meta, "edit": order}
            field = "caption" if message["type"] in p.MEDIA_TYPES else "text"
            message = {**message, field: op["text"], "edited": True}
    elif kind == "reaction":
        reactions: dict[str, list[Any]] = meta.get("reactions", {})
        current = reactions.get(op["sender"])
        if current is None or [op["ts"], op["pos"]] > current[:2]:
            # A removal is remembered too, so an older reaction arriving late stays removed.
            reactions = {**reactions, op["sender"]: [op["ts"], op["pos"], op["emoji"]]}
            meta = {**meta, "reactions": reactions}
            public = _public_reactions(reactions)
            if public != message["reactions"]:
                message = {**message, "reactions": public}
    return message, meta


def _public_reactions(reactions: dict[str, list[Any]]) -> dict[str, list[str]]:
    by_emoji: dict[str, list[str]] = {}
    for sender, (_ts, _pos, emoji) in reactions.items():
        if emoji:
            by_emoji.setdefault(emoji, []).append(sender)
    return {emoji: sorted(by_emoji[emoji]) for emoji in sorted(by_emoji)}


# --- reading events ----------------------------------------------------------------------


def read(event: Event) -> Operation | None:
    """Return what an event does, to which key id (within `event.instance`); None when it
    changes no message.

    Raises:
        ValueError: the event is of a type we handle but its payload is structurally broken,
            or names an instance, message or chat by an id no real one is as long as.
    """
    operation = _read(event)
    if operation is None:
        return None
    key_id, op = operation
    message = op.get("message")
    chat = (message["chat_jid"] or "") if message is not None else ""
    if max(len(event.instance), len(key_id), len(chat)) > p.LONGEST_ID:
        raise ValueError(
            f"{event.type} at {event.position}: instance, key id or chat longer than"
            f" {p.LONGEST_ID} characters"
        )
    return operation


def _read(event: Event) -> Operation | None:
    etype = event.type
    if etype in _CONTENT_EVENTS:
        return _read_content(event)
    if etype == "messages.update":
        return _read_status(event)
    if etype in _EDIT_EVENTS:
        data = _data(event)
        # 2.3.1+ sends the protocolMessage itself: {key, type, editedMessage, timestampMs},
        # where a REVOKE may come without `type` (enum 0, which encoders leave out).
        bare_revoke = (
            etype == "messages.edited"
            and isinstance(data.get("key"), dict)
            and "message" not in data
        )
        proto = data if "type" in data or "editedMessage" in data or bare_revoke else None
        if proto is None and isinstance(data.get("message"), dict):
            proto = _protocol_in(data["message"])
        if proto is None:
            return None
        return _read_protocol(event, data, proto)
    if etype == "messages.delete":
        data = _data(event)
        key = data.get("key")
        key_id = key.get("id") if isinstance(key, dict) else data.get("id")
        return _require_id(key_id, event), {"op": "delete", "pos": event.position}
    return None


def _read_content(event: Event) -> Operation | None:
    data = _data(event)
    key = data.get("key")
    if not isinstance(key, dict):
        raise ValueError(f"{event.type} at {event.position} has no data.key")
    key_id = _require_id(key.get("id"), event)
    message = data.get("message")
    if not isinstance(message, dict):
        return None  # a stub (group notice, failed decryption): nothing to show
    content_key, value = p.content(message)
    if content_key == "reactionMessage":
        return _read_reaction(event, data, key, value)
    if content_key in ("protocolMessage", "editedMessage"):
        proto = _protocol_in(message)
        return _read_protocol(event, data, proto) if proto is not None else None
    if content_key in _NOT_MESSAGES:
        return None
    return key_id, {
        "op": "message",
        "message": _build(event, data, key, key_id, content_key, value),
        "upsert": event.type == "messages.upsert",
    }


def _build(
    event: Event,
    data: dict[str, Any],
    key: dict[str, Any],
    key_id: str,
    content_key: str | None,
    value: Any,
) -> dict[str, Any]:
    mtype = p.message_type(content_key)
    from_me = key.get("fromMe") is True
    chat = p.chat_jid(key)
    status = _status(data.get("status"))
    if status is None:
        # v1 and the Meta channel send no status. Evolution v2 gives incoming messages
        # DELIVERY_ACK, API sends PENDING, and a fromMe upsert was already sent by the phone.
        if not from_me:
            status = "delivered"
        else:
            status = "pending" if event.type == "send.message" else "server_ack"
    is_media = mtype in p.MEDIA_TYPES
    push_name = data.get("pushName")
    return {
        "instance": event.instance,
        "chat_jid": chat,
        "key_id": key_id,
        "from_me": from_me,
        "sender": _author(event, key, chat, from_me),
        "push_name": push_name if isinstance(push_name, str) and push_name else None,
        "type": mtype,
        "text": p.text_of(content_key, value),
        "caption": p.caption_of(value) if is_media else None,
        "timestamp": p.iso_utc(data.get("messageTimestamp")),
        "status": status,
        "edited": False,
        "deleted": False,
        "reactions": {},
        "quoted_key_id": _quoted(data, value),
        "media": _media(data["message"], value) if is_media else None,
    }


def _author(event: Event, key: dict[str, Any], chat: str | None, from_me: bool) -> str | None:
    """Return the JID of who wrote (or reacted): us, the group participant, or the DM peer."""
    if from_me:
        return p.normalize_jid(event.payload.get("sender"))
    if chat is not None and chat.endswith(("@g.us", "@broadcast")):
        participant = key.get("participant")
        if key.get("addressingMode") == "lid" or p.is_lid(participant):
            # participantAlt from 2.3.3 on, participantPn in 2.3.0-2.3.2.
            alt = p.phone_jid(key.get("participantAlt"), key.get("participantPn"))
            participant = alt or participant
        return p.normalize_jid(participant)
    return chat


def _quoted(data: dict[str, Any], value: Any) -> str | None:
    for info in (
        data.get("contextInfo"),
        value.get("contextInfo") if isinstance(value, dict) else None,
    ):
        if isinstance(info, dict):
            stanza = info.get("stanzaId")
            if isinstance(stanza, str) and stanza:
                return stanza
    return None


def _media(message: dict[str, Any], value: Any) -> dict[str, Any]:
    # After ingest `base64` is a reference to the stored attachment; a string means ingest
    # could not decode it, and its content is never looked at here.
    ref = message.get("base64")
    ref = ref if isinstance(ref, dict) else {}
    value = value if isinstance(value, dict) else {}
    mimetype = ref.get("mimetype") or value.get("mimetype") or value.get("mime_type")
    size = p.to_int(ref.get("size"))
    if size is None:
        size = p.to_int(value.get("fileLength"))
    sha256 = ref.get("sha256")
    return {
        "status": "pending",
        "mimetype": mimetype if isinstance(mimetype, str) else None,
        "size": size,
        "sha256": sha256 if isinstance(sha256, str) else None,
    }


def _read_reaction(
    event: Event, data: dict[str, Any], key: dict[str, Any], reaction: Any
) -> tuple[str, dict[str, Any]]:
    target = reaction.get("key") if isinstance(reaction, dict) else None
    target_id = _require_id(target.get("id") if isinstance(target, dict) else None, event)
    # Protobuf JSON omits empty strings, so a removal ("") may arrive with no `text` at all.
    emoji = reaction.get("text")
    ts = p.to_int(reaction.get("senderTimestampMs"))
    if ts is None:
        seconds = p.to_int(data.get("messageTimestamp"))
        ts = seconds * 1000 if seconds is not None else 0
    from_me = key.get("fromMe") is True
    sender = _author(event, key, p.chat_jid(key), from_me) or ("me" if from_me else "unknown")
    return target_id, {
        "op": "reaction",
        "pos": event.position,
        "sender": sender,
        "ts": ts,
        "emoji": emoji if isinstance(emoji, str) else "",
    }


def _protocol_in(message: dict[str, Any]) -> dict[str, Any] | None:
    """Return the protocolMessage of a message, also inside an `editedMessage` wrapper."""
    content_key, value = p.content(message)
    if content_key == "editedMessage" and isinstance(value, dict):
        content_key, value = p.content(value.get("message"))
    if content_key == "protocolMessage" and isinstance(value, dict):
        return value
    return None


def _read_protocol(
    event: Event, data: dict[str, Any], proto: dict[str, Any]
) -> tuple[str, dict[str, Any]] | None:
    ptype = proto.get("type")
    # REVOKE is enum value 0, the protobuf default, which JSON encoders may leave out.
    if ptype is None:
        ptype = "MESSAGE_EDIT" if "editedMessage" in proto else "REVOKE"
    if ptype not in ("REVOKE", 0, "MESSAGE_EDIT", 14):
        return None  # ephemeral settings, history sync, key shares: not about a message
    key = proto.get("key")
    target_id = _require_id(key.get("id") if isinstance(key, dict) else None, event)
    if ptype in ("REVOKE", 0):
        return target_id, {"op": "delete", "pos": event.position}
    content_key, value = p.content(proto.get("editedMessage"))
    body = p.text_of(content_key, value)
    if body is None:
        body = p.caption_of(value)
    if body is None:
        return None
    ts = p.to_int(proto.get("timestampMs"))
    if ts is None:
        seconds = p.to_int(data.get("messageTimestamp"))
        ts = seconds * 1000 if seconds is not None else 0
    return target_id, {"op": "edit", "pos": event.position, "ts": ts, "text": body}


def _read_status(event: Event) -> tuple[str, dict[str, Any]] | None:
    data = _data(event)
    status = _status(data.get("status"))
    if status is None:
        # "DELETED" is what Evolution 2.3.x reports for edits (issue #2010) and for any
        # status it cannot map; poll votes come without status. None of them is a status.
        return None
    key_id = data.get("keyId")
    if not key_id:
        key = data.get("key")
        key_id = key.get("id") if isinstance(key, dict) else data.get("id")
    return _require_id(key_id, event), {"op": "status", "pos": event.position, "status": status}


def _status(value: Any) -> str | None:
    if isinstance(value, str):
        return _STATUS_NAMES.get(value)
    if type(value) is int and 0 <= value < len(_STATUS_CODES):
        return _STATUS_CODES[value]
    return None


def _data(event: Event) -> dict[str, Any]:
    data = event.payload.get("data")
    if not isinstance(data, dict):
        raise ValueError(f"{event.type} at {event.position}: data is not an object")
    return data


def _require_id(key_id: Any, event: Event) -> str:
    if not isinstance(key_id, str) or not key_id:
        raise ValueError(f"{event.type} at {event.position}: no message key id")
    return key_id
