"""The dedupe identity of a webhook: what makes two deliveries "the same webhook".

Envelope fields (`date_time`, `destination`, `server_url`, `apikey`, `sender`) never take
part: Evolution re-emits the same event with a new `date_time`, and the instance and the
global webhook deliver it with different `destination`s (contract section 3).

One addition to the contract's rules: a `messages.update` is also told apart by the poll
votes (`pollUpdates`) or the edited `message` it carries, when it carries them. Evolution
reports every vote on a poll, and in some versions every edit, as an update with the same key
id and status, so by key id and status alone each vote after the first would be answered as a
duplicate and never stored. Likewise a `messages.edited` without `timestampMs` is told apart
by the edit it carries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

# What a messages.update may carry besides its status; what a messages.edited carries.
_CARRIED = ("pollUpdates", "message")
_EDITS = ("editedMessage", "message")
# A key longer than this (in UTF-8 bytes) is replaced by its hash: it must fit an index row
# of PostgreSQL's (about 2,700 bytes), and the keys of real webhooks are far shorter.
_LONGEST_KEY = 1024


def dedupe_key(instance: str, event: str, data: Any) -> str:
    """Return the unique key under which this webhook is stored once."""
    parts = [instance, event, *_identity(event, data)]
    key = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    if len(key.encode("utf-8", "surrogatepass")) <= _LONGEST_KEY:
        return key
    return json.dumps(["sha256:" + _hash(key)])


def _identity(event: str, data: Any) -> list[str]:
    d: dict[str, Any] = data if isinstance(data, dict) else {}
    key: dict[str, Any] = d["key"] if isinstance(d.get("key"), dict) else {}
    if event in ("messages.upsert", "send.message") and _text(key.get("id")):
        return [_text(key.get("id"))]
    if event == "messages.update":
        key_id = _text(d.get("keyId")) or _text(d.get("id")) or _text(key.get("id"))
        if key_id:
            parts = [key_id, _text(d.get("status")), _text(d.get("participant"))]
            # Poll votes and edits also come as updates, with the same status each time:
            # what they carry tells them apart. Plain receipts carry neither.
            return parts + _carried(d, _CARRIED)
    if event == "messages.edited" and _text(key.get("id")):
        parts = [_text(key.get("id")), _text(d.get("type")), _text(d.get("timestampMs"))]
        # Without its time, two edits of one message differ only by what they carry.
        return parts if parts[2] else parts + _carried(d, _EDITS)
    if event == "messages.delete":
        target = _text(key.get("id")) or _text(d.get("id"))
        if target:
            return [target]
    return ["sha256:" + _canonical_hash(data)]


def _carried(data: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    return [f"{name}:{_text(data[name])}" for name in names if data.get(name)]


def _text(value: Any) -> str:
    """Scalars as text; 2.3.6 Long objects ({low, high, unsigned}) as their decimal value."""
    if value is None:
        return ""
    if isinstance(value, dict) and "low" in value and "high" in value:
        with contextlib.suppress(TypeError, ValueError, OverflowError):  # else: hashed below
            return str((int(value["high"]) << 32) + (int(value["low"]) & 0xFFFFFFFF))
    if isinstance(value, (dict, list)):
        return _canonical_hash(value)
    return str(value)


def _canonical_hash(value: Any) -> str:
    return _hash(json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")))


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
