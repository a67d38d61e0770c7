"""Fetching media from Evolution: answers that are slow, wrong or refused. A local stand-in."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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


class _Redirector(ThreadingHTTPServer):
    """Answers every request with `status` and a Location; records the apikey of each."""

    def __init__(self, status: int, location: str) -> None:
        self.apikeys: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                server.apikeys.append(self.headers.get("apikey"))
                self.send_response(status)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.daemon_threads = True
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def test_a_redirect_is_not_followed_so_the_apikey_stays_with_evolution() -> None:
    # given: an Evolution that redirects to another host (it answers 500 if ever reached)
    elsewhere = _Redirector(500, "/")
    evolution = _Redirector(302, elsewhere.url + "/collect")
    try:
        fetcher = EvolutionMedia(evolution.url, "evolution-test-key", timeout_seconds=5)
        # when: a media is fetched
        with pytest.raises(MediaUnavailable):
            fetcher.fetch("acme", "K")
    finally:
        evolution.close()
        elsewhere.close()
    # then: Evolution had the key, and the other host never heard from us
    assert evolution.apikeys == ["evolution-test-key"]
    assert elsewhere.apikeys == []
