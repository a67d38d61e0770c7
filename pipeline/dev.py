"""`make run`: local tokens, a ready-to-paste curl, and the services in the foreground."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DEV_ENV = ROOT / "var" / "dev.env"
FIXTURE = "messages.upsert__conversation__1.json"
# Each child: its name and `python -m pipeline` arguments.
CHILDREN = {"web": ["web"], "worker": ["worker"]}


def run(settings: Settings) -> int:
    """Start every service, print how to use them, stop them all on Ctrl-C."""
    tokens = _tokens()
    env = {**os.environ, **{k: v for k, v in tokens.items() if not os.environ.get(k)}}
    url = f"http://127.0.0.1:{settings.port}"
    # A SIGTERM or SIGHUP (kill, a closed terminal, a process manager) stops the children the
    # way Ctrl-C does, instead of leaving them running, holding the port, in their sessions.
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, _interrupt)
    children = {
        # Sessions of their own: Ctrl-C reaches only us, and each child then gets the SIGTERM
        # a deploy would send, and shuts down gracefully.
        name: subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args], env=env, cwd=ROOT, start_new_session=True
        )
        for name, args in CHILDREN.items()
    }
    print(_banner(url, env), flush=True)
    try:
        while all(child.poll() is None for child in children.values()):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    failed = [n for n, c in children.items() if c.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed else 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _tokens() -> dict[str, str]:
    """Local tokens, made once and kept in var/dev.env so they survive restarts."""
    if DEV_ENV.exists():
        pairs = (line.split("=", 1) for line in DEV_ENV.read_text().splitlines() if "=" in line)
        return {key: value for key, value in pairs}
    api = secrets.token_urlsafe(16)
    tokens = {
        "WEBHOOK_TOKEN": secrets.token_urlsafe(24),
        "API_TOKENS": f"{api}:*",
        "ADMIN_TOKEN": secrets.token_urlsafe(24),
    }
    DEV_ENV.parent.mkdir(parents=True, exist_ok=True)
    DEV_ENV.write_text("".join(f"{k}={v}\n" for k, v in tokens.items()))
    DEV_ENV.chmod(0o600)
    return tokens


def _banner(url: str, env: dict[str, str]) -> str:
    fixture = ROOT.parent / "shared" / "fixtures" / "evolution" / FIXTURE
    body = f"@{fixture}" if fixture.exists() else "'" + _SAMPLE + "'"
    instance = json.loads(fixture.read_bytes() if fixture.exists() else _SAMPLE)["instance"]
    api_token = env["API_TOKENS"].split(",")[0].split(":")[0]
    return f"""
Zapline is starting at {url}   (tokens are kept in var/dev.env)

  WEBHOOK_TOKEN = {env["WEBHOOK_TOKEN"]}
  API_TOKENS    = {env["API_TOKENS"]}
  ADMIN_TOKEN   = {env["ADMIN_TOKEN"]}

Post a real Evolution webhook:

  curl -sS -X POST '{url}/webhooks/evolution' \\
    -H 'Authorization: Bearer {env["WEBHOOK_TOKEN"]}' \\
    -H 'Content-Type: application/json' --data-binary {body}

See it arrive:

  curl -sS -H 'Authorization: Bearer {api_token}' '{url}/api/instances/{instance}/chats'
  live page: {url}/  (instance {instance}, token {api_token})

Readiness: curl -sS {url}/health/ready      Stop: Ctrl-C
"""


_SAMPLE = (
    '{"event":"messages.upsert","instance":"demo","data":{"key":{"remoteJid":'
    '"5511999990000@s.whatsapp.net","fromMe":false,"id":"3EB0DEMO0001"},"pushName":"Ana",'
    '"message":{"conversation":"Hello from curl"},"messageType":"conversation",'
    '"messageTimestamp":1764460800}}'
)
