"""Turning a raw webhook body into what the store appends."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from events.attachments import (
    LARGE_BODY_BYTES,
    Attachment,
    decode_base64_field,
    drop_sent_reference,
    reference_large_media,
    split_inline_media,
)
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


def parse_webhook(body: bytes | bytearray) -> Webhook:
    """Parse an Evolution webhook body; any JSON object with a string `event` is accepted.

    A large attachment comes back in a temporary file: close the webhook's attachment once
    it is stored.

    Raises:
        BadWebhook: the body is not a JSON object with a string `event`.
    """
    large = _split_large(body) if len(body) > LARGE_BODY_BYTES else None
    attachment: Attachment | None = None
    if large is not None:
        payload, attachment = large
    else:
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError) as error:
            raise BadWebhook(f"body is not JSON: {error}") from None
        except RecursionError:
            raise BadWebhook("body is nested too deeply") from None
        if not isinstance(payload, dict):
            raise BadWebhook("body is not a JSON object")
    unwrapped = _unwrap(payload)
    event = unwrapped.get("event")
    if not isinstance(event, str) or not event:
        if attachment is not None:
            attachment.close()
        raise BadWebhook("body has no string `event`")
    instance = unwrapped.get("instance")
    instance = instance if isinstance(instance, str) else ""
    dropped = False
    if large is None:
        dropped = drop_sent_reference(unwrapped)
        attachment = split_inline_media(unwrapped)
    changed = attachment is not None or dropped or unwrapped is not payload
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


def _split_large(body: bytes | bytearray) -> tuple[dict[str, Any], Attachment] | None:
    """The large-body path: decode its inline media in chunks, parse only the rest."""
    found = decode_base64_field(body, min_chars=LARGE_BODY_BYTES // 2)
    if found is None:
        return None
    payload, blob = found
    attachment = None
    if isinstance(payload, dict):
        attachment = reference_large_media(_unwrap(payload), blob)
    if attachment is None:  # the large string is not the inline media: parse the body whole
        blob.close()
        return None
    return payload, attachment


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
