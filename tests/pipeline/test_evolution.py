"""Fetching media from Evolution: answers that are slow, wrong or refused. A local stand-in."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from events.errors import MediaUnavailable
from pipeline.evolution import EvolutionMedia
from tests.pipeline.stubs import Answer, EvolutionStub, png


@pytest.fixture
def evolution() -> Iterator[EvolutionStub]:
    stub = EvolutionStub()
    yield stub
    stub.close()


def test_an_answer_that_trickles_in_is_given_up_on_near_the_timeout(
    evolution: EvolutionStub,
) -> None:
    # ~300 bytes at one per 50 ms: the whole answer would take ~15 s, the timeout is 1 s
    evolution.script["K"] = [Answer(201, png(2, 2), drip=0.05)]
    fetcher = EvolutionMedia(evolution.url, evolution.api_key, timeout_seconds=1)
    with pytest.raises(MediaUnavailable, match="in time"):
        fetcher.fetch("acme", "K")
    # It hung up long before the answer was whole (not after reading it all, too late).
    time.sleep(0.5)
    assert evolution.trickled["K"] < 100


def test_a_prompt_answer_is_fetched_whole(evolution: EvolutionStub) -> None:
    image = png(4, 4)
    evolution.script["K"] = [Answer(201, image)]
    blob = EvolutionMedia(evolution.url, evolution.api_key, timeout_seconds=5).fetch("acme", "K")
    assert blob.spool is not None
    blob.spool.seek(0)
    assert blob.spool.read() == image and blob.size == len(image)
    blob.spool.close()
