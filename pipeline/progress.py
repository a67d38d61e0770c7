"""Progress of long commands: a live line (count, rate, ETA) on a TTY, log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Reports `done` of `total` items at most every `every` seconds."""

    def __init__(self, label: str, total: int, stream: TextIO = sys.stderr, every: float = 1.0):
        self._label = label
        self._total = total
        self._stream = stream
        self._tty = stream.isatty()
        self._every = every if self._tty else max(every, 5.0)
        self._started = time.monotonic()
        self._last = 0.0
        self._done = 0
        self._written = -1
        # Where this run started (a resumed rebuild starts part-way): the rate is this run's.
        self._first: int | None = None

    def update(self, done: int, total: int | None = None) -> None:
        if self._first is None:
            self._first = done
        self._done = done
        if total is not None:
            self._total = total
        if time.monotonic() - self._last >= self._every:
            self._last = time.monotonic()
            self._write()

    def done(self) -> None:
        if self._written != self._done:  # the last update may have written it already
            self._write()
        if self._tty:
            self._stream.write("\n")
        self._stream.flush()

    def _write(self) -> None:
        self._written = self._done
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = (self._done - (self._first or 0)) / elapsed
        left = max(self._total - self._done, 0)
        if left == 0:
            when = f"took {elapsed:.1f} s"
        else:
            when = "ETA " + (f"{left / rate:.0f} s" if rate > 0 else "?")
        text = f"{self._label}: {self._done}/{self._total} ({rate:.0f}/s, {when})"
        self._stream.write(f"\r{text}" if self._tty else f"{text}\n")
        self._stream.flush()
