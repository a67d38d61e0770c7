"""Splitting inline base64 media out of a webhook payload, so the event log stays lean.

Evolution puts the whole decrypted file in `data.message.base64` when the instance webhook
has base64 on (docs/research/evolution-webhooks.md section 2.2). At ingest we decode it, store
the bytes once under their sha256, and leave `{"sha256", "size", "mimetype"}` in its place.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Attachment:
    """A blob split out of a payload, addressed by the sha256 of its bytes."""

    sha256: str
    size: int
    mimetype: str | None
    data: bytes


def split_inline_media(payload: dict[str, Any]) -> Attachment | None:
    """Replace `data.message.base64` by a reference in place and return the decoded blob.

    A value that is not valid base64 is left untouched: we never drop what the sender sent.
    """
    data = payload.get("data")
    message = data.get("message") if isinstance(data, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("base64"), str):
        return None
    encoded: str = message["base64"]
    mimetype = _mimetype(message)
    if encoded.startswith("data:") and "," in encoded[:200]:
        header, encoded = encoded.split(",", 1)
        mimetype = header[5:].split(";", 1)[0] or mimetype
    blob = _decode(encoded)
    if blob is None:
        return None
    digest = hashlib.sha256(blob).hexdigest()
    message["base64"] = {"sha256": digest, "size": len(blob), "mimetype": mimetype}
    return Attachment(sha256=digest, size=len(blob), mimetype=mimetype, data=blob)


def _decode(encoded: str) -> bytes | None:
    has_space = any(c in encoded for c in " \t\r\n")
    compact = "".join(encoded.split()) if has_space else encoded
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None


def _mimetype(message: dict[str, Any]) -> str | None:
    for value in message.values():
        if isinstance(value, dict) and isinstance(value.get("mimetype"), str):
            mimetype: str = value["mimetype"]
            return mimetype
    return None
