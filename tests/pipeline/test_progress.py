"""Progress lines of long commands. Pure: a fake clock, a string for the terminal."""

from __future__ import annotations

import io

import pytest

from pipeline import progress
from pipeline.progress import Progress


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


def test_a_resumed_run_reports_its_own_rate_and_each_line_once(clock: list[float]) -> None:
    out = io.StringIO()
    report = Progress("rebuild", 10_000, stream=out)
    report.update(6_000)  # resumed: 6,000 were built by an earlier run
    clock[0] += 10
    report.update(8_000)
    report.done()

    lines = out.getvalue().splitlines()
    assert lines == [
        "rebuild: 6000/10000 (0/s, ETA ?)",
        "rebuild: 8000/10000 (200/s, ETA 10 s)",
    ]


def test_the_last_line_says_how_long_the_whole_run_took(clock: list[float]) -> None:
    out = io.StringIO()
    report = Progress("replay", 300, stream=out)
    report.update(0)
    clock[0] += 1.5
    report.update(300)
    report.done()

    assert out.getvalue().splitlines()[-1] == "replay: 300/300 (200/s, took 1.5 s)"
