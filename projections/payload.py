"""Decoding the value shapes Evolution sends across versions, shared by the projections.

Evolution 2.3.6 started sending protobuf bytes as `{"0": 141, ...}` objects and int64 as
`{"low", "high", "unsigned"}`; earlier versions send base64 and decimal strings
(docs/research/evolution-webhooks.md section 2). Every helper here accepts all of them and
returns None for anything it does not recognise, never raising.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

# Content keys that are not the message itself (Baileys' getContentType skips the same ones).
_NOT_CONTENT = frozenset({"messageContextInfo", "senderKeyDistributionMessage", "base64"})

# Wrappers whose `message` holds the real content (WhatsApp's FutureProofMessage and
# deviceSentMessage); Evolution v2 unwraps only some of them. Each photo of an album comes
# as an associatedChildMessage, an animated sticker as a lottieStickerMessage.
_WRAPPERS = frozenset(
    {
        "ephemeralMessage",
        "viewOnceMessage",
        "viewOnceMessageV2",
        "viewOnceMessageV2Extension",
        "documentWithCaptionMessage",
        "deviceSentMessage",
        "associatedChildMessage",
        "lottieStickerMessage",
        "groupMentionedMessage",
        "botInvokeMessage",
        "botForwardedMessage",
        "statusMentionMessage",
        "groupStatusMentionMessage",
        "groupStatusMessage",
        "groupStatusMessageV2",
        "limitSharingMessage",
    }
)

_TYPES = {
    "conversation": "text",
    "extendedTextMessage": "text",
    "imageMessage": "image",
    "videoMessage": "video",
    "ptvMessage": "video",
    "audioMessage": "audio",
    "stickerMessage": "sticker",
    "documentMessage": "document",
    "locationMessage": "location",
    "liveLocationMessage": "location",
    "contactMessage": "contact",
    "contactsArrayMessage": "contacts",
    "listMessage": "list",
    "listResponseMessage": "list_response",
    "buttonsMessage": "buttons",
    "buttonsResponseMessage": "buttons_response",
    "templateMessage": "template",
    "templateButtonReplyMessage": "template_button_reply",
    "interactiveMessage": "interactive",
    "interactiveResponseMessage": "interactive_response",
    "pollCreationMessage": "poll",
    "pollCreationMessageV2": "poll",
    "pollCreationMessageV3": "poll",
}

# Ids and JIDs are tens of characters. Rows are keyed by up to three of them, which at this
# length still fit an index row of PostgreSQL's (about 2,700 bytes) in any characters; a
# longer one would fail the batch writing it again and again.
LONGEST_ID = 200

MEDIA_TYPES = frozenset({"image", "video", "audio", "sticker", "document"})


def to_int(value: Any) -> int | None:
    """Return an int from an int, a decimal string or a protobuf Long object, else None;
    None too out of bigint's range, which no real count or time is and no column holds."""
    number = _whole(value)
    return number if number is not None and -(2**63) <= number < 2**63 else None


def _whole(value: Any) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    if isinstance(value, dict) and "low" in value and "high" in value:
        low, high = value["low"], value["high"]
        if type(low) is not int or type(high) is not int:
            return None
        # Long.js keeps two signed 32-bit halves; only `high` carries the sign when signed.
        if value.get("unsigned"):
            return ((high & 0xFFFFFFFF) << 32) | (low & 0xFFFFFFFF)
        return (high << 32) + (low & 0xFFFFFFFF)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def to_bytes(value: Any) -> bytes | None:
    """Return bytes from a base64 string, an index-keyed byte object or a list, else None."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        except (binascii.Error, ValueError):
            return None
    try:
        if isinstance(value, dict):
            return bytes(value[str(i)] for i in range(len(value)))
        if isinstance(value, list):
            return bytes(value)
    except (KeyError, TypeError, ValueError):
        return None
    return None


# Unix seconds past this (the year 5138) can only be milliseconds, as some senders give them.
_MILLISECONDS_FROM = 10**11


def iso_utc(seconds: Any) -> str | None:
    """Return unix seconds (int, string or Long) as an ISO 8601 UTC string, else None.

    Milliseconds are read as such: a five-digit year would sort after every real time and
    hold the chat's last message for good.
    """
    number = to_int(seconds)
    if number is None or number < 0:
        return None
    if number >= _MILLISECONDS_FROM:
        number //= 1000
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(number))
    except (OverflowError, OSError, ValueError):
        return None


def normalize_jid(jid: Any) -> str | None:
    """Return a JID without its device suffix (`5516...:90@s.whatsapp.net`), else None."""
    if not isinstance(jid, str) or not jid:
        return None
    at = jid.find("@")
    colon = jid.find(":", 0, at) if at > 0 else -1
    if colon > 0:
        return jid[:colon] + jid[at:]
    return jid


def chat_jid(key: dict[str, Any]) -> str | None:
    """Return the chat of a message key, preferring the phone JID over a `@lid` one.

    2.3.3+ names the phone JID `remoteJidAlt` (with `addressingMode`); 2.3.0-2.3.2 name it
    `senderPn`, which on our own messages may be our own number, so it is taken only on
    incoming ones.
    """
    jid = key.get("remoteJid")
    if key.get("addressingMode") == "lid" or is_lid(jid):
        incoming_pn = key.get("senderPn") if key.get("fromMe") is not True else None
        jid = phone_jid(key.get("remoteJidAlt"), incoming_pn) or jid
    return normalize_jid(jid)


def is_lid(jid: Any) -> bool:
    """Whether a JID is a WhatsApp LID (`...@lid`), which hides the phone number."""
    return isinstance(jid, str) and jid.endswith("@lid")


def phone_jid(*candidates: Any) -> str | None:
    """Return the first candidate that is a JID but not a LID, else None."""
    for jid in candidates:
        if isinstance(jid, str) and "@" in jid and not is_lid(jid):
            return jid
    return None


def content(message: Any) -> tuple[str | None, Any]:
    """Return `(content key, content value)` of a message, looking inside known wrappers."""
    for _ in range(4):  # wrappers nest at most a couple of levels; bound the walk anyway
        if not isinstance(message, dict):
            return None, None
        found = None
        for name in message:
            if name == "conversation" or ("Message" in name and name not in _NOT_CONTENT):
                found = name
                break
        if found is None:
            return None, None
        value = message[found]
        if (
            found in _WRAPPERS
            and isinstance(value, dict)
            and isinstance(value.get("message"), dict)
        ):
            message = value["message"]
            continue
        return found, value
    return None, None


def message_type(content_key: str | None) -> str:
    """Return the public type for a content key: "text", "image", ..., the raw key, or "unknown"."""
    if content_key is None:
        return "unknown"
    return _TYPES.get(content_key, content_key)


def text_of(content_key: str | None, value: Any) -> str | None:
    """Return the text of a text content (`conversation` or `extendedTextMessage.text`)."""
    if content_key == "conversation":
        return value if isinstance(value, str) else None
    if content_key == "extendedTextMessage" and isinstance(value, dict):
        text = value.get("text")
        return text if isinstance(text, str) else None
    return None


def caption_of(value: Any) -> str | None:
    """Return the caption of a media content, else None."""
    if isinstance(value, dict):
        caption = value.get("caption")
        if isinstance(caption, str):
            return caption
    return None
