"""Stand-ins for media tests: a real PNG, an Evolution API that answers getBase64FromMediaMessage,
a local S3 (moto's server mode) and a proxy that stalls an upload half-way."""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.netutil import free_port


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid RGB PNG whose pixels depend on `seed` (so seeds give different bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    rows = b"".join(
        b"\x00" + bytes(((x * 7 + y * 13 + seed) % 256) for x in range(width * 3))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 1))
        + chunk(b"IEND", b"")
    )


def image_upsert(
    instance: str, key_id: str, blob: bytes | None, mimetype: str = "image/png", **extra: Any
) -> bytes:
    """A messages.upsert with an imageMessage; inline base64 when `blob` is given."""
    message: dict[str, Any] = {"imageMessage": {"mimetype": mimetype, "caption": f"photo {key_id}"}}
    if blob is not None:
        message["base64"] = base64.b64encode(blob).decode()
    return json.dumps(
        {
            "event": "messages.upsert",
            "instance": instance,
            "data": {
                "key": {"id": key_id, "remoteJid": "5511999990000@s.whatsapp.net", "fromMe": False},
                "pushName": "Ana",
                "message": message,
                "messageType": "imageMessage",
                "messageTimestamp": 1764460800,
                **extra,
            },
        }
    ).encode()


@dataclass
class Answer:
    """One scripted answer: status, the file to send as base64, a delay before it, and a
    pause between the body's bytes (an answer that trickles in)."""

    status: int
    blob: bytes | None = None
    delay: float = 0.0
    drip: float = 0.0


@dataclass
class EvolutionStub:
    """Answers POST /chat/getBase64FromMediaMessage/{instance} from a script per key id.

    Each request for a key id takes the next scripted answer; the last one repeats.
    Unscripted key ids get 400 with Evolution's error shape.
    """

    api_key: str = "evolution-test-key"
    script: dict[str, list[Answer]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Per key id, how many bytes of a trickled answer went out before the client left.
    trickled: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                stub.requests.append(
                    {"path": self.path, "apikey": self.headers.get("apikey"), "body": body}
                )
                key_id = body.get("message", {}).get("key", {}).get("id")
                answers = stub.script.get(key_id) or [Answer(400)]
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
                time.sleep(answer.delay)
                if answer.status == 201 and answer.blob is not None:
                    out = {
                        "mediaType": "imageMessage",
                        "fileName": f"{key_id}.png",
                        "caption": None,
                        "size": {"fileLength": len(answer.blob)},
                        "mimetype": "image/png",
                        "base64": base64.b64encode(answer.blob).decode(),
                        "buffer": None,
                    }
                else:
                    out = {
                        "status": answer.status,
                        "error": "Bad Request" if answer.status == 400 else "Internal Server Error",
                        "response": {"message": ["Message not found"]},
                    }
                data = json.dumps(out).encode()
                with contextlib.suppress(OSError):  # the client may have timed out already
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if not answer.drip:
                        self.wfile.write(data)
                    stub.trickled[key_id] = 0
                    for byte in data if answer.drip else b"":  # ends when the client leaves
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        stub.trickled[key_id] += 1
                        time.sleep(answer.drip)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[dict[str, str]]:
    """A local S3 over real HTTP (moto's server mode; it does not check signatures)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    s3_client(env).create_bucket(Bucket=bucket)
    try:
        yield env
    finally:
        server.stop()


def s3_client(env: dict[str, str]) -> Any:
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=env["S3_ENDPOINT_URL"],
        region_name=env["S3_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
