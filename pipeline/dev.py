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

from events.errors import ConfigError
from pipeline import probes
from pipeline.config import Settings
from pipeline.web import check_free

ROOT = Path(__file__).resolve().parent.parent
DEV_ENV = ROOT / "var" / "dev.env"


def run(settings: Settings) -> int:
    """Start every service, print how to use them, stop them all on Ctrl-C.

    Returns 0 after Ctrl-C (or SIGTERM, SIGHUP), 1 when a service ended on its own.
    """
    tokens = _tokens()
    env = {**os.environ, **{k: v for k, v in tokens.items() if not os.environ.get(k)}}
    # This machine only: the banner's tokens are no secret.
    bind = f"127.0.0.1:{settings.port}"
    check_free(bind)  # before the banner and the worker, so the reason is the last line
    try:
        probes.check_rabbitmq(settings.rabbitmq_url, timeout=5)
    except probes.LoginRefused:
        # A wrong vhost or password: the services would start and retry it for ever.
        raise ConfigError(probes.REFUSED_LOGIN) from None
    except probes.DependencyDown:
        pass  # down for now: the services work without it and catch up (invariant 6)
    url = f"http://{bind}"
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
        for name, args in {"web": ["web", "--bind", bind], "worker": ["worker"]}.items()
    }
    print(_banner(url, env), flush=True)
    ended = None
    try:
        while ended is None:
            time.sleep(0.5)
            ended = next((n for n, c in children.items() if c.poll() is not None), None)
    except KeyboardInterrupt:
        pass
    if ended is not None:
        others = " and ".join(n for n in children if n != ended)
        code = children[ended].returncode
        print(f"zapline: {ended} exited (code {code}); stopping {others}", file=sys.stderr)
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
    return 1 if failed or ended is not None else 0


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
    instance = json.loads(SAMPLE)["instance"]
    api_token = env["API_TOKENS"].split(",")[0].split(":")[0]
    return f"""
Zapline is starting at {url}   (tokens are kept in var/dev.env)

  WEBHOOK_TOKEN = {env["WEBHOOK_TOKEN"]}
  API_TOKENS    = {env["API_TOKENS"]}
  ADMIN_TOKEN   = {env["ADMIN_TOKEN"]}

Post an Evolution webhook (a messages.upsert as Evolution v2 sends it):

  curl -sS -X POST '{url}/webhooks/evolution' \\
    -H 'Authorization: Bearer {env["WEBHOOK_TOKEN"]}' \\
    -H 'Content-Type: application/json' --data-binary '{SAMPLE}'

See it arrive:

  curl -sS -H 'Authorization: Bearer {api_token}' '{url}/api/instances/{instance}/chats'
  live page: {url}/  (instance {instance}, token {api_token})

Readiness: curl -sS {url}/health/ready      Stop: Ctrl-C
"""


# The README shows the same body.
SAMPLE = (
    '{"event":"messages.upsert","instance":"demo","data":{"key":{"remoteJid":'
    '"5511999990000@s.whatsapp.net","fromMe":false,"id":"3EB0DEMO0001"},"pushName":"Ana",'
    '"message":{"conversation":"Hello from curl"},"messageType":"conversation",'
    '"messageTimestamp":1764460800}}'
)
