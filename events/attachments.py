"""Splitting inline base64 media out of a webhook payload, so the event log stays lean.

Evolution puts the whole decrypted file in `data.message.base64` when the instance webhook
has base64 on (docs/research/evolution-webhooks.md section 2.2). At ingest we decode it, store
the bytes once under their sha256, and leave `{"sha256", "size", "mimetype"}` in its place.

Small bodies go through `json.loads` as they are. A large body (a video can be 50 MB) would
then exist as the body, the decoded JSON string and the decoded bytes at once, so its one
large base64 string is instead found in the raw bytes and decoded in chunks to a temporary
file while hashing; only the rest of the JSON is parsed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

# Blobs are stored and read back in chunks of this many bytes.
CHUNK_BYTES = 1024 * 1024
# Bodies over this size take the chunked path.
LARGE_BODY_BYTES = 1024 * 1024
# Decode this many base64 characters at a time (a multiple of 4: whole 3-byte groups).
_DECODE_STEP = 4 * 256 * 1024
# Stands in for the base64 string while the rest of the JSON is parsed. ':' is not in the
# base64 alphabet, so no real value can equal it.
_PLACEHOLDER = "zapline:blob"
_FIELD = re.compile(rb'"base64"\s*:\s*"')


@dataclass(frozen=True)
class Attachment:
    """A blob split out of a payload, addressed by the sha256 of its bytes.

    Its bytes are in memory (`data`) or, for large blobs, in a temporary file (`spool`).
    """

    sha256: str
    size: int
    mimetype: str | None
    data: bytes | None = None
    spool: IO[bytes] | None = None

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes | memoryview]:
        """Yield the bytes in order, at most `size` at a time, without copying them whole."""
        if self.data is not None:
            view = memoryview(self.data)
            for start in range(0, len(view), size):
                yield view[start : start + size]
            return
        if self.spool is not None:
            self.spool.seek(0)
            while piece := self.spool.read(size):
                yield piece

    def close(self) -> None:
        """Drop the temporary file, if any."""
        if self.spool is not None:
            with contextlib.suppress(OSError):
                self.spool.close()


def split_inline_media(payload: dict[str, Any]) -> Attachment | None:
    """Replace `data.message.base64` by a reference in place and return the decoded blob.

    A value that is not valid base64 is left untouched: we never drop what the sender sent.
    """
    message = _message_of(payload)
    if message is None or not isinstance(message.get("base64"), str):
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


def drop_sent_reference(payload: dict[str, Any]) -> bool:
    """Null a `data.message.base64` that is neither a string nor null; say whether it did.

    Only ingest writes a reference there: one the sender wrote could name another
    instance's stored blob by its sha256.
    """
    message = _message_of(payload)
    if message is None or message.get("base64") is None or isinstance(message["base64"], str):
        return False
    message["base64"] = None
    return True


def reference_large_media(payload: dict[str, Any], blob: Attachment) -> Attachment | None:
    """Put the reference to a blob found by decode_base64_field at `data.message.base64`.

    Answers None (and changes nothing) when the blob's string was somewhere else.
    """
    message = _message_of(payload)
    if message is None or not is_placeholder(message.get("base64")):
        return None
    mimetype = blob.mimetype or _mimetype(message)
    message["base64"] = {"sha256": blob.sha256, "size": blob.size, "mimetype": mimetype}
    return Attachment(blob.sha256, blob.size, mimetype, spool=blob.spool)


def decode_base64_field(
    body: bytes | bytearray, *, min_chars: int = 0
) -> tuple[Any, Attachment] | None:
    """Decode the body's one `"base64": "..."` string (at least `min_chars` long) to a file.

    Returns the rest of the JSON, parsed, with a placeholder where the string was (the caller
    checks where it sits with `is_placeholder`), and the blob. None when there is no such
    string, more than one, or it holds JSON escapes or invalid base64.
    """
    spans = []
    for match in _FIELD.finditer(body):
        start = match.end()
        end = body.find(b'"', start)
        if end >= 0 and end - start >= min_chars:
            spans.append((start, end))
    if len(spans) != 1:
        return None
    start, end = spans[0]
    if body.find(b"\\", start, end) >= 0:  # escapes such as \/ or \n: parse it whole
        return None
    mimetype = None
    head = bytes(body[start : start + 200])
    if head.startswith(b"data:") and b"," in head:
        header = head[5 : head.index(b",")].decode("ascii", "replace")
        mimetype = header.split(";", 1)[0] or None
        start += head.index(b",") + 1
    blob = _decode_to_file(memoryview(body)[start:end], mimetype)
    if blob is None:
        return None
    rest = bytes(body[: spans[0][0]]) + _PLACEHOLDER.encode() + bytes(body[end:])
    try:
        return json.loads(rest), blob
    except (UnicodeDecodeError, ValueError):
        blob.close()
        return None


def is_placeholder(value: Any) -> bool:
    """Whether `value` is where decode_base64_field found its string."""
    return value == _PLACEHOLDER


def _decode_to_file(encoded: memoryview, mimetype: str | None) -> Attachment | None:
    # Handed to the Attachment, which closes it once the blob is stored.
    spool = tempfile.TemporaryFile()  # noqa: SIM115
    digest = hashlib.sha256()
    size = 0
    try:
        for start in range(0, len(encoded), _DECODE_STEP):
            piece: bytes | memoryview = encoded[start : start + _DECODE_STEP]
            if len(piece) % 4:  # only the last piece; senders may leave padding out
                piece = bytes(piece) + b"=" * (-len(piece) % 4)
            decoded = binascii.a2b_base64(piece, strict_mode=True)
            digest.update(decoded)
            spool.write(decoded)
            size += len(decoded)
    except (binascii.Error, ValueError):
        spool.close()
        return None
    spool.flush()
    return Attachment(digest.hexdigest(), size, mimetype, spool=spool)


def _message_of(payload: Any) -> dict[str, Any] | None:
    data = payload.get("data") if isinstance(payload, dict) else None
    message = data.get("message") if isinstance(data, dict) else None
    return message if isinstance(message, dict) else None


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
