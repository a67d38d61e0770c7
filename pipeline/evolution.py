"""Fetching a media's bytes from Evolution API (`getBase64FromMediaMessage`).

WhatsApp's media URLs are encrypted and expire, so we cannot download them ourselves; the
Evolution instance that received the message can (docs/research/evolution-webhooks.md 2.2).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from events.attachments import Attachment, decode_base64_field, is_placeholder
from events.errors import MediaRejected, MediaUnavailable

# Evolution answers with the whole file as base64 in JSON; more than this is refused.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
_READ_PIECE = 256 * 1024


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Leave a 3xx as an HTTPError: urllib would send our `apikey` header on to the new host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_RefuseRedirects)


class EvolutionMedia:
    """Asks an Evolution server for a message's media, by instance and message key id."""

    def __init__(self, base_url: str, api_key: str | None, timeout_seconds: float) -> None:
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = timeout_seconds

    def fetch(self, instance: str, key_id: str) -> Attachment:
        """The media's bytes, in a temporary file the caller closes.

        Raises:
            MediaRejected: Evolution says the message is gone (400/404) or refuses us (401/403).
            MediaUnavailable: no answer in time, a 3xx or 5xx, or an answer we cannot read.
        """
        body = self._post(instance, key_id)
        found = decode_base64_field(body)
        if (
            found is not None
            and isinstance(found[0], dict)
            and is_placeholder(found[0].get("base64"))
        ):
            answer, blob = found
        else:
            if found is not None:
                found[1].close()
            answer, blob = _decode_whole(body)
        mimetype = blob.mimetype or answer.get("mimetype")
        return Attachment(
            blob.sha256,
            blob.size,
            mimetype if isinstance(mimetype, str) else None,
            spool=blob.spool,
        )

    def _post(self, instance: str, key_id: str) -> bytearray:
        url = f"{self._base_url}/chat/getBase64FromMediaMessage/{quote(instance, safe='')}"
        payload = json.dumps({"message": {"key": {"id": key_id}}, "convertToMp4": False})
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["apikey"] = self._api_key
        request = urllib.request.Request(url, payload.encode(), headers, method="POST")
        deadline = time.monotonic() + self._timeout
        try:
            with _OPENER.open(request, timeout=self._timeout) as response:
                return _read(response, deadline)
        except urllib.error.HTTPError as error:
            detail = error.read(500).decode("utf-8", "replace").strip()
            if 300 <= error.code < 400:
                raise MediaUnavailable(
                    f"Evolution redirected ({error.code}) to {error.headers.get('Location')}:"
                    " not followed, as it would carry EVOLUTION_API_KEY"
                ) from error
            if error.code in (400, 404):
                raise MediaRejected(
                    f"Evolution has no media for message {key_id} ({error.code}): {detail}"
                ) from error
            if error.code in (401, 403):
                raise MediaRejected(
                    f"Evolution refused EVOLUTION_API_KEY ({error.code})"
                ) from error
            raise MediaUnavailable(f"Evolution answered {error.code}: {detail}") from error
        except (OSError, http.client.HTTPException) as error:  # URLError and timeouts too
            reason = getattr(error, "reason", error)
            raise MediaUnavailable(f"Evolution did not answer: {reason}") from error


def _read(response: Any, deadline: float) -> bytearray:
    """Read the whole answer, piece by piece, within the deadline and the size limit."""
    length = response.headers.get("Content-Length")
    expected = int(length) if length and length.isdigit() else None
    if expected is not None and expected > MAX_RESPONSE_BYTES:
        raise MediaRejected(f"Evolution's answer is over {MAX_RESPONSE_BYTES} bytes")
    body = bytearray()
    # read1 returns what one receive brings: read() would wait to fill the piece, so an
    # answer trickling in byte by byte could hold the worker thread far past the deadline.
    while piece := response.read1(_READ_PIECE):
        body += piece
        if len(body) > MAX_RESPONSE_BYTES:
            raise MediaRejected(f"Evolution's answer is over {MAX_RESPONSE_BYTES} bytes")
        if time.monotonic() > deadline:
            raise MediaUnavailable("Evolution's answer did not arrive in time")
    return body


def _decode_whole(body: bytearray) -> tuple[dict[str, Any], Attachment]:
    """The slow path for answers decode_base64_field does not take (escaped, small, odd)."""
    try:
        answer = json.loads(body)
        encoded = answer["base64"]
        if encoded.startswith("data:") and "," in encoded[:200]:
            encoded = encoded.split(",", 1)[1]
        blob = base64.b64decode("".join(encoded.split()) + "=" * (-len(encoded) % 4))
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as error:
        raise MediaUnavailable(f"Evolution's answer holds no readable base64: {error}") from None
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the Attachment, closed by caller
    spool.write(blob)
    spool.flush()
    digest = hashlib.sha256(blob).hexdigest()
    return answer, Attachment(digest, len(blob), None, spool=spool)
