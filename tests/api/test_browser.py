"""The live page in real headless Chromium: messages arrive live and survive a web restart."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator

import pytest

from events.pool import Pool
from events.store import EventStore
from events.webhook import parse_webhook
from tests.conftest import projected_up_to_head, start_web, start_worker, wait_for

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(
        not (shutil.which("chromium") and shutil.which("chromedriver")),
        reason="needs Debian's chromium and chromium-driver (.ci/browser)",
    ),
]


def _upsert(key_id: str, ts: int) -> bytes:
    return json.dumps(
        {
            "event": "messages.upsert",
            "instance": "web",
            "data": {
                "key": {"id": key_id, "remoteJid": "551188887777@s.whatsapp.net", "fromMe": False},
                "pushName": "Bia",
                "message": {"conversation": f"text {key_id}"},
                "messageTimestamp": ts,
            },
        }
    ).encode()


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def _shown(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#messages li')].map(li => li.dataset.key)"
    )


def test_the_page_shows_messages_live_and_catches_up_after_a_web_restart(
    fresh_database_url: str, browser
) -> None:
    url = fresh_database_url
    worker = start_worker(url)
    web = start_web(url, API_TOKENS="page-token:web")
    port = web.port
    try:
        # given: the page, connected with a token its user typed in
        browser.get(f"http://127.0.0.1:{port}/")
        browser.find_element("id", "instance").send_keys("web")
        browser.find_element("id", "token").send_keys("page-token")
        browser.find_element("id", "connect").click()
        wait_for(lambda: browser.find_element("id", "state").text == "live", timeout=15)
        # when: messages are posted, they appear live
        for i in range(3):
            web.post_webhook(_upsert(f"LIVE{i}", 1764460800 + i))
        wait_for(lambda: len(_shown(browser)) == 3, timeout=15)
        # and: the web process restarts while more messages arrive
        web.stop()
        wait_for(lambda: browser.find_element("id", "state").text != "live", timeout=15)
        store = EventStore(Pool(url, size=1))
        store.append([parse_webhook(_upsert(f"AWAY{i}", 1764460900 + i)) for i in range(4)])
        wait_for(lambda: projected_up_to_head(url), timeout=20)
        web = _restart_on(url, port)
        # then: the page reconnects by itself and shows every message once, in order
        wait_for(lambda: len(_shown(browser)) == 7, timeout=30)
        time.sleep(0.5)
        assert _shown(browser) == [f"LIVE{i}" for i in range(3)] + [f"AWAY{i}" for i in range(4)]
        assert browser.find_element("id", "state").text == "live"
        assert "page-token" not in browser.page_source
    finally:
        web.stop()
        worker.stop()


def _restart_on(url: str, port: int):
    import tests.conftest as conftest

    original = conftest.free_port
    conftest.free_port = lambda: port
    try:
        return wait_for(lambda: _try_start(url), timeout=20, interval=0.2)
    finally:
        conftest.free_port = original


def _try_start(url: str):
    try:
        return start_web(url, API_TOKENS="page-token:web")
    except RuntimeError:
        return None
