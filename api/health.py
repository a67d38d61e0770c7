"""HealthResource (liveness) and ReadyResource (readiness), each bounded in time."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import falcon
import gevent

from events.errors import first_line

Check = Callable[[], Any]


class Lifecycle:
    """What the process is doing: serving, or draining after SIGTERM."""

    def __init__(self) -> None:
        self.draining = False
        self.on_drain: list[Callable[[], None]] = []

    def start_draining(self) -> None:
        """Answer readiness with 503 from now on, and run what must happen at shutdown."""
        self.draining = True
        for callback in self.on_drain:
            callback()


class HealthResource:
    """GET /health: the process is alive and the database answers within 1 s."""

    def __init__(self, database: Check, lifecycle: Lifecycle, timeout: float = 1.0) -> None:
        self._database = database
        self._lifecycle = lifecycle
        self._timeout = timeout

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        results, failed = run_checks({"database": self._database}, self._timeout)
        results = _connected(results)
        resp.status = falcon.HTTP_503 if failed else falcon.HTTP_200
        resp.media = {
            "status": "unhealthy" if failed else "ok",
            **results,
            "draining": self._lifecycle.draining,
        }


class ReadyResource:
    """GET /health/ready: 200 only when every dependency answers and we are not draining."""

    def __init__(
        self,
        checks: Mapping[str, Check],
        info: Mapping[str, Check],
        lifecycle: Lifecycle,
        timeout: float = 1.5,
    ) -> None:
        self._checks = checks
        self._info = info
        self._lifecycle = lifecycle
        self._timeout = timeout

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        results, failed = run_checks({**self._checks, **self._info}, self._timeout)
        results = {**results, **_connected({n: results[n] for n in self._checks})}
        # A figure that could not be read is null, never a string in its place; the reason
        # goes under "errors" (it does not make the instance unready).
        errors = {name: results[name] for name in self._info if name in failed}
        results.update(dict.fromkeys(errors))
        failing = [name for name in self._checks if name in failed]
        if self._lifecycle.draining:
            failing.append("draining")
        resp.status = falcon.HTTP_503 if failing else falcon.HTTP_200
        resp.media = {
            "status": "not_ready" if failing else "ready",
            **results,
            "draining": self._lifecycle.draining,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            **({"failing": failing} if failing else {}),
            **({"errors": errors} if errors else {}),
        }


def run_checks(checks: Mapping[str, Check], timeout: float) -> tuple[dict[str, Any], set[str]]:
    """Run checks concurrently: what each returned (a failure's reason), and which failed.

    Every check is abandoned after `timeout` seconds, so a dependency that accepts
    connections and never answers cannot hold the probe.
    """
    greenlets = {name: gevent.spawn(_outcome, check) for name, check in checks.items()}
    gevent.joinall(list(greenlets.values()), timeout=timeout)
    results: dict[str, Any] = {}
    failed: set[str] = set()
    for name, greenlet in greenlets.items():
        if not greenlet.ready():
            greenlet.kill(block=False)
            failed.add(name)
            results[name] = f"timeout after {timeout:g} s"
            continue
        passed, results[name] = greenlet.value
        if not passed:
            failed.add(name)
    return results, failed


def _outcome(check: Check) -> tuple[bool, Any]:
    """(passed, what the check returned or why it failed), caught here: gevent prints the
    traceback of every greenlet that dies of an exception, once per probe of a dependency
    that is down."""
    try:
        return True, check()
    except Exception as error:
        return False, _safe(error)


def _connected(results: dict[str, Any]) -> dict[str, Any]:
    """A dependency check that returned nothing passed: say "connected"."""
    return {name: "connected" if value is None else value for name, value in results.items()}


def _safe(error: BaseException) -> str:
    """A one-line reason with any credentials in URLs masked."""
    return "unavailable: " + re.sub(r"//[^/@\s]*@", "//***@", first_line(error))[:200]
