"""Turning a raw webhook body into what the store appends."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from events.attachments import Attachment, split_inline_media
from events.errors import BadWebhook
from events.identity import dedupe_key


@dataclass(frozen=True)
class Webhook:
    """A parsed webhook ready to append: its identity, lean payload and split-out media."""

    instance: str
    type: str
    dedupe_key: str
    payload_json: str
    attachment: Attachment | None


def parse_webhook(body: bytes) -> Webhook:
    """Parse an Evolution webhook body; any JSON object with a string `event` is accepted.

    Raises:
        BadWebhook: the body is not a JSON object with a string `event`.
    """
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise BadWebhook(f"body is not JSON: {error}") from None
    if not isinstance(payload, dict):
        raise BadWebhook("body is not a JSON object")
    unwrapped = _unwrap(payload)
    event = unwrapped.get("event")
    if not isinstance(event, str) or not event:
        raise BadWebhook("body has no string `event`")
    instance = unwrapped.get("instance")
    instance = instance if isinstance(instance, str) else ""
    attachment = split_inline_media(unwrapped)
    changed = attachment is not None or unwrapped is not payload
    if _UNSTORABLE.search(body):
        payload_json = json.dumps(_clean(unwrapped), ensure_ascii=False, separators=(",", ":"))
    elif changed:
        payload_json = json.dumps(unwrapped, ensure_ascii=False, separators=(",", ":"))
    else:
        try:
            payload_json = body.decode("utf-8")
        except UnicodeDecodeError:  # JSON may also arrive as UTF-16 or UTF-32
            payload_json = json.dumps(unwrapped, ensure_ascii=False, separators=(",", ":"))
    return Webhook(
        instance=instance,
        type=event,
        dedupe_key=dedupe_key(instance, event, unwrapped.get("data")),
        payload_json=payload_json,
        attachment=attachment,
    )


def _unwrap(payload: dict[str, Any]) -> dict[str, Any]:
    """Forwarders such as n8n relay Evolution's body as `{"body": {...}}`: store the body."""
    inner = payload.get("body")
    if "event" not in payload and isinstance(inner, dict) and isinstance(inner.get("event"), str):
        return inner
    return payload


# jsonb holds neither U+0000 nor lone surrogates (PostgreSQL rejects the whole row).
_UNSTORABLE = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]")


def _clean(value: Any) -> Any:
    """Replace the characters jsonb cannot hold by U+FFFD; keep everything else as sent."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_clean(item) for item in value]
    if isinstance(value, dict):
        return {_clean(key): _clean(item) for key, item in value.items()}
    return value
